//! A paginated JSON API: page/size, offset/limit, cursor or next-link pagination, the
//! auth header from the environment, retries with backoff on 429, 5xx and timeouts.
//! Records are mapped to the entity's declared columns; numbers are read from the JSON
//! text itself, so decimals stay exact.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::builder::{BatchBuilder, ColumnBuilder, schema_of};
use super::{EntityWriter, Target, data_error};
use crate::error::{Error, Result};
use crate::job::JobConfig;
use crate::job::exporters::{ExportSpec, ExporterConfig, HttpExporter, HttpSpec, Pagination};

/// Longest wait between two attempts, whatever `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

pub(crate) async fn export(
    _job: &JobConfig,
    exporter: &ExporterConfig,
    http: &HttpExporter,
    targets: &mut [Target<'_>],
) -> Result<BTreeMap<String, String>> {
    let system = exporter.system.as_str();
    let auth = auth(system, http)?;
    let client = client(http)?;
    let api = Api {
        system,
        client,
        http,
        auth,
        batch_rows: exporter.batch_rows,
    };
    for target in targets.iter_mut() {
        api.export_entity(target).await?;
    }
    Ok(BTreeMap::new())
}

/// The HTTP client of an exporter: its timeout and recon's user agent.
pub(super) fn client(http: &HttpExporter) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(http.timeout)
        .user_agent(concat!("recon/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::bug("building the HTTP client", e))
}

/// The auth header's value from the exporter's `auth_env`, when it names one.
pub(super) fn auth(system: &str, http: &HttpExporter) -> Result<Option<String>> {
    let Some(var) = &http.auth_env else {
        return Ok(None);
    };
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Some(v)),
        _ => Err(Error::Usage(format!(
            "system `{system}`: environment variable {var} (the exporter's auth_env) is not set"
        ))),
    }
}

struct Api<'a> {
    system: &'a str,
    client: reqwest::Client,
    http: &'a HttpExporter,
    auth: Option<String>,
    batch_rows: usize,
}

/// One page as received.
struct Page {
    url: reqwest::Url,
    body: bytes::Bytes,
    link_next: Option<String>,
}

impl Api<'_> {
    async fn export_entity(&self, target: &mut Target<'_>) -> Result<()> {
        let entity = target.entity.name.clone();
        let ExportSpec::Http(spec) = target.spec else {
            unreachable!("validated")
        };
        let base = self
            .http
            .base_url
            .join(spec.path.trim_start_matches('/'))
            .map_err(|e| data_error(self.system, &entity, format!("path `{}`: {e}", spec.path)))?;
        let source = format!("GET {base}");
        let schema = schema_of(
            spec.columns
                .iter()
                .map(|c| (c.name.clone(), c.data_type.clone())),
        );
        let mut batch = BatchBuilder::try_new(schema.clone(), self.batch_rows)
            .map_err(|m| data_error(self.system, &entity, m))?;
        let key_index: Vec<usize> = target
            .entity
            .key
            .iter()
            .map(|k| {
                spec.columns
                    .iter()
                    .position(|c| &c.name == k)
                    .ok_or_else(|| {
                        data_error(
                            self.system,
                            &entity,
                            format!("key column `{k}` is not among the export's declared columns"),
                        )
                    })
            })
            .collect::<Result<_>>()?;
        let mut writer = EntityWriter::new(target, schema, source, self.batch_rows)?;
        let size = self.http.page_size as u64;
        let mut seen: HashMap<[u8; 16], u64> = HashMap::new();
        let mut next_url: Option<reqwest::Url> = None;
        let mut cursor: Option<String> = None;
        let mut cursors_seen = std::collections::HashSet::new();
        let mut page_no: u64 = 0;
        loop {
            page_no += 1;
            let url = match (&spec.pagination, &next_url) {
                (Pagination::NextLink { .. }, Some(u)) => u.clone(),
                _ => page_url(&base, spec, size, page_no, cursor.as_deref()),
            };
            let page = self.fetch(&entity, page_no, url).await?;
            let at = |m: String| {
                data_error(
                    self.system,
                    &entity,
                    format!("page {page_no} ({}): {m}", page.url),
                )
            };
            let body: &RawValue = serde_json::from_slice(&page.body)
                .map_err(|e| at(format!("malformed JSON: {e}")))?;
            let records_raw = lookup(body, &spec.records)
                .map_err(&at)?
                .ok_or_else(|| at(format!("no `{}` in the response", spec.records.join("."))))?;
            let records: Vec<&RawValue> = serde_json::from_str(records_raw.get()).map_err(|e| {
                at(format!(
                    "`{}` is not an array of records: {e}",
                    if spec.records.is_empty() {
                        "the body".to_string()
                    } else {
                        spec.records.join(".")
                    }
                ))
            })?;
            let count = records.len() as u64;
            for (i, record) in records.into_iter().enumerate() {
                let fields: HashMap<String, &RawValue> = serde_json::from_str(record.get())
                    .map_err(|e| at(format!("record {i} is not an object: {e}")))?;
                let mut key_hash = Sha256::new();
                for &k in &key_index {
                    let raw = field(&fields, &spec.columns[k].json_path).map_err(&at)?;
                    key_hash.update(raw.map(RawValue::get).unwrap_or("null").as_bytes());
                    key_hash.update([0x1f]);
                }
                let digest: [u8; 16] = key_hash.finalize()[..16].try_into().expect("16 bytes");
                if let Some(first) = seen.insert(digest, page_no) {
                    let key = key_index
                        .iter()
                        .map(|&k| {
                            let raw = field(&fields, &spec.columns[k].json_path).ok().flatten();
                            format!(
                                "{}={}",
                                spec.columns[k].name,
                                raw.map(RawValue::get).unwrap_or("null")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(at(format!(
                        "record {i} repeats key ({key}) first seen on page {first}: the API's pagination is not stable (rows changing under offset or page pagination?); use cursor or next-link pagination, or export from a consistent source"
                    )));
                }
                for (c, column) in spec.columns.iter().zip(batch.columns.iter_mut()) {
                    let raw = field(&fields, &c.json_path).map_err(&at)?;
                    append_json(column, &c.type_name, raw).map_err(|m| {
                        at(format!(
                            "record {i}, column `{}` ({}): {m}",
                            c.name, c.type_name
                        ))
                    })?;
                }
                batch.rows += 1;
                if batch.is_full() {
                    writer.write(&batch.finish()).await?;
                }
            }
            let more = match &spec.pagination {
                Pagination::Page { .. } | Pagination::Offset { .. } => count >= size && count > 0,
                Pagination::Cursor { cursor_path, .. } => {
                    let next = lookup(body, cursor_path).map_err(&at)?.and_then(|v| {
                        match serde_json::from_str::<serde_json::Value>(v.get()).ok()? {
                            serde_json::Value::String(s) if !s.is_empty() => Some(s),
                            serde_json::Value::Number(n) => Some(n.to_string()),
                            _ => None,
                        }
                    });
                    match next {
                        Some(c) if !cursors_seen.insert(c.clone()) => {
                            return Err(at(format!("the API returned cursor `{c}` a second time")));
                        }
                        Some(c) => {
                            cursor = Some(c);
                            true
                        }
                        None => false,
                    }
                }
                Pagination::NextLink { next_path, .. } => {
                    let next = match next_path {
                        Some(p) => lookup(body, p).map_err(&at)?.and_then(|v| {
                            serde_json::from_str::<Option<String>>(v.get())
                                .ok()
                                .flatten()
                        }),
                        None => page.link_next.clone(),
                    };
                    match next.filter(|n| !n.is_empty()) {
                        Some(n) => {
                            let u = page
                                .url
                                .join(&n)
                                .map_err(|e| at(format!("next link `{n}` is not a URL: {e}")))?;
                            if !cursors_seen.insert(u.to_string()) {
                                return Err(at(format!(
                                    "the API returned next link `{u}` a second time"
                                )));
                            }
                            next_url = Some(u);
                            true
                        }
                        None => false,
                    }
                }
            };
            if !more {
                break;
            }
        }
        if batch.rows > 0 {
            writer.write(&batch.finish()).await?;
        }
        info!(system = self.system, entity = %entity, rows = writer.rows(), pages = page_no, "exported");
        writer.finish(target).await
    }

    /// One GET with retries on timeouts, connection errors, 429 and 5xx.
    async fn fetch(&self, entity: &str, page_no: u64, url: reqwest::Url) -> Result<Page> {
        let mut attempt = 0u32;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut req = self
                .client
                .get(url.clone())
                .header("Accept", "application/json");
            if let Some(a) = &self.auth {
                req = req.header(self.http.auth_header.as_str(), a.as_str());
            }
            let outcome: std::result::Result<std::convert::Infallible, (String, Option<Duration>)> =
                match req.send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        let retry_after = resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(Duration::from_secs);
                        let link_next = resp
                            .headers()
                            .get_all("link")
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                            .find_map(link_next);
                        if status.is_success() {
                            match resp.bytes().await {
                                Ok(body) => {
                                    return Ok(Page {
                                        url,
                                        body,
                                        link_next,
                                    });
                                }
                                Err(e) => Err((format!("reading the body: {e}"), None)),
                            }
                        } else if status == StatusCode::TOO_MANY_REQUESTS
                            || status.is_server_error()
                        {
                            Err((format!("HTTP {status}"), retry_after))
                        } else {
                            let body = resp.text().await.unwrap_or_default();
                            let snippet: String = body.chars().take(200).collect();
                            return Err(data_error(
                                self.system,
                                entity,
                                format!("page {page_no} ({url}): HTTP {status}: {snippet}"),
                            ));
                        }
                    }
                    Err(e) if e.is_timeout() => Err((
                        format!("no response within {} s", self.http.timeout.as_secs()),
                        None,
                    )),
                    Err(e) => Err((describe(&e), None)),
                };
            let Err((problem, retry_after)) = outcome;
            if attempt >= self.http.max_retries {
                return Err(Error::SourceUnavailable {
                    system: self.system.to_string(),
                    message: format!(
                        "export: entity `{entity}`, page {page_no} ({url}): {problem} after {} attempts",
                        attempt + 1
                    ),
                });
            }
            let wait = retry_after.unwrap_or(backoff).min(MAX_BACKOFF);
            warn!(system = self.system, entity, page = page_no, %problem, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

/// The URL of page `page_no` (1-based) for page, offset and cursor pagination, and of
/// the first page for next-link pagination.
fn page_url(
    base: &reqwest::Url,
    spec: &HttpSpec,
    size: u64,
    page_no: u64,
    cursor: Option<&str>,
) -> reqwest::Url {
    let mut url = base.clone();
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in &spec.params {
            q.append_pair(k, v);
        }
        match &spec.pagination {
            Pagination::Page {
                page_param,
                size_param,
                first_page,
            } => {
                q.append_pair(page_param, &(first_page + page_no - 1).to_string());
                q.append_pair(size_param, &size.to_string());
            }
            Pagination::Offset {
                offset_param,
                size_param,
            } => {
                q.append_pair(offset_param, &((page_no - 1) * size).to_string());
                q.append_pair(size_param, &size.to_string());
            }
            Pagination::Cursor {
                cursor_param,
                size_param,
                ..
            } => {
                q.append_pair(size_param, &size.to_string());
                if let Some(c) = cursor {
                    q.append_pair(cursor_param, c);
                }
            }
            Pagination::NextLink { size_param, .. } => {
                q.append_pair(size_param, &size.to_string());
            }
        }
    }
    url
}

/// `<https://…>; rel="next"` from one Link header value.
fn link_next(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        is_next.then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

/// Follows a dotted path of object keys; `Ok(None)` when a key is absent or null.
fn lookup<'a>(
    value: &'a RawValue,
    path: &[String],
) -> std::result::Result<Option<&'a RawValue>, String> {
    let mut current = value;
    for (depth, key) in path.iter().enumerate() {
        if current.get() == "null" {
            return Ok(None);
        }
        let map: HashMap<String, &RawValue> = serde_json::from_str(current.get())
            .map_err(|_| format!("`{}` is not an object", path[..depth].join(".")))?;
        match map.get(key.as_str()) {
            Some(v) => current = v,
            None => return Ok(None),
        }
    }
    Ok(Some(current))
}

fn field<'a>(
    fields: &HashMap<String, &'a RawValue>,
    path: &[String],
) -> std::result::Result<Option<&'a RawValue>, String> {
    let Some((first, rest)) = path.split_first() else {
        return Ok(None);
    };
    match fields.get(first.as_str()) {
        None => Ok(None),
        Some(v) => lookup(v, rest),
    }
}

/// Appends one JSON value as the column's type. Absent and `null` are NULL; numbers may
/// come as JSON numbers or strings; `json` columns keep the value's JSON text.
fn append_json(
    column: &mut ColumnBuilder,
    type_name: &str,
    raw: Option<&RawValue>,
) -> std::result::Result<(), String> {
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        column.append_null();
        return Ok(());
    };
    let text = raw.get();
    if matches!(type_name, "json" | "jsonb")
        && let ColumnBuilder::Utf8(b) = column
    {
        b.append_value(text);
        return Ok(());
    }
    let as_string = || -> Option<String> { serde_json::from_str::<String>(text).ok() };
    let is_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
    match column {
        ColumnBuilder::Boolean(b) => match text {
            "true" => b.append_value(true),
            "false" => b.append_value(false),
            _ => return Err(format!("{text} is not a boolean")),
        },
        ColumnBuilder::Utf8(b) => match as_string() {
            Some(s) => b.append_value(s),
            None => return Err(format!("{text} is not a string")),
        },
        ColumnBuilder::Binary(b) => {
            let s = as_string().ok_or_else(|| format!("{text} is not a base64 string"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|e| format!("{text} is not base64: {e}"))?;
            b.append_value(bytes);
        }
        c if is_number => {
            let numeric_type = !matches!(
                c,
                ColumnBuilder::Date32(_) | ColumnBuilder::Time64(_) | ColumnBuilder::Timestamp(..)
            );
            if !numeric_type {
                return Err(format!("{text} is not a string"));
            }
            if matches!(
                c,
                ColumnBuilder::Int16(_)
                    | ColumnBuilder::Int32(_)
                    | ColumnBuilder::Int64(_)
                    | ColumnBuilder::UInt64(_)
            ) && text.contains(['.', 'e', 'E'])
            {
                return Err(format!("{text} is not an integer"));
            }
            if matches!(c, ColumnBuilder::Decimal(..)) && text.contains(['e', 'E']) {
                return Err(format!(
                    "{text} is in exponent notation; send decimals as plain numbers or strings"
                ));
            }
            c.append_text(text)?;
        }
        c => match as_string() {
            Some(s) => c.append_text(&s)?,
            None => return Err(format!("{text} is neither a string nor a number")),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_next() {
        assert_eq!(
            link_next(r#"<https://api/x?page=2>; rel="next", <https://api/x?page=9>; rel="last""#),
            Some("https://api/x?page=2".into())
        );
        assert_eq!(link_next(r#"<https://api/x?page=9>; rel="last""#), None);
    }
}
