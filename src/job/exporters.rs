//! The export part of a job file: `[exporters.<system>]` tables and each entity's
//! `export.<system>` table, in raw form and validated.

use std::collections::BTreeMap;

use arrow::datatypes::{DataType, TimeUnit};
use serde::Deserialize;

/// `[exporters.<system>]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExporter {
    pub kind: String,
    /// postgres, mysql: the environment variable holding the connection URL.
    pub url_env: Option<String>,
    /// http: the API's base URL.
    pub base_url: Option<String>,
    /// http: environment variable holding the auth header's value (e.g. `Bearer …`).
    pub auth_env: Option<String>,
    /// http: the auth header's name (default `Authorization`).
    pub auth_header: Option<String>,
    pub timeout_secs: Option<u64>,
    pub max_retries: Option<u32>,
    pub page_size: Option<u32>,
    /// postgres, mysql: rows per Parquet row group.
    pub batch_rows: Option<usize>,
}

/// `export.<system>` of one entity, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEntityExport {
    pub table: Option<String>,
    pub query: Option<String>,
    pub columns: Option<Vec<String>>,
    pub path: Option<String>,
    pub records: Option<String>,
    pub pagination: Option<RawPagination>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub json_paths: BTreeMap<String, String>,
    pub format: Option<String>,
    pub has_header: Option<bool>,
    pub delimiter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPagination {
    pub style: String,
    pub page_param: Option<String>,
    pub size_param: Option<String>,
    pub offset_param: Option<String>,
    pub cursor_param: Option<String>,
    pub cursor_path: Option<String>,
    pub next_path: Option<String>,
    pub first_page: Option<u64>,
}

/// How one system is exported.
#[derive(Debug, Clone, PartialEq)]
pub enum ExporterKind {
    Postgres {
        url_env: String,
    },
    Mysql {
        url_env: String,
    },
    Http(HttpExporter),
    Files,
    /// Already exported by another tool: read as is.
    Snapshot,
}

impl ExporterKind {
    pub fn name(&self) -> &'static str {
        match self {
            ExporterKind::Postgres { .. } => "postgres",
            ExporterKind::Mysql { .. } => "mysql",
            ExporterKind::Http(_) => "http",
            ExporterKind::Files => "files",
            ExporterKind::Snapshot => "snapshot",
        }
    }

    /// Whether recon itself writes this system's snapshots (and their manifests).
    pub fn writes_snapshots(&self) -> bool {
        !matches!(self, ExporterKind::Snapshot)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExporterConfig {
    pub system: String,
    pub kind: ExporterKind,
    /// Rows per Parquet row group (and per Arrow batch) for database exports.
    pub batch_rows: usize,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpExporter {
    pub base_url: url::Url,
    pub auth_env: Option<String>,
    pub auth_header: String,
    pub timeout: std::time::Duration,
    pub max_retries: u32,
    pub page_size: u32,
}

/// What one entity's export from one system reads.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportSpec {
    /// A table (optionally schema-qualified), all columns or the listed ones.
    Table {
        table: String,
        columns: Option<Vec<String>>,
    },
    /// A query whose result columns are the snapshot's columns.
    Query(String),
    Http(HttpSpec),
    Files(FilesSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpSpec {
    /// Path below the exporter's base URL (or an absolute URL).
    pub path: String,
    /// Dotted path of the records array in each page's JSON (empty: the body is the array).
    pub records: Vec<String>,
    pub pagination: Pagination,
    pub params: BTreeMap<String, String>,
    pub columns: Vec<ColumnSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pagination {
    /// `?page=N&size=M`, from `first_page`, until a short page.
    Page {
        page_param: String,
        size_param: String,
        first_page: u64,
    },
    /// `?offset=N&limit=M`, until a short page.
    Offset {
        offset_param: String,
        size_param: String,
    },
    /// `?cursor=C`, C read from `cursor_path` in the previous page, until it is null.
    Cursor {
        cursor_param: String,
        cursor_path: Vec<String>,
        size_param: String,
    },
    /// The next page's URL, from `next_path` in the body or else the `Link: rel="next"`
    /// header, until there is none.
    NextLink {
        next_path: Option<Vec<String>>,
        size_param: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilesSpec {
    /// URL (absolute after validation) of a file or a prefix; `{run_date}`, `{system}`
    /// and `{entity}` are filled in.
    pub url: String,
    pub format: FileFormat,
    /// Declared columns; for CSV and NDJSON the schema is inferred when absent.
    pub columns: Option<Vec<ColumnSpec>>,
    pub has_header: bool,
    pub delimiter: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Csv,
    Ndjson,
    Parquet,
}

/// A declared column: name, Arrow type and, for JSON, where the value is.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    pub name: String,
    pub data_type: DataType,
    /// The declared type's name, for messages.
    pub type_name: String,
    /// Dotted path in a JSON record (default: the column name).
    pub json_path: Vec<String>,
}

pub const DEFAULT_BATCH_ROWS: usize = 64 * 1024;
pub const DEFAULT_PAGE_SIZE: u32 = 500;
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_MAX_RETRIES: u32 = 5;

pub(crate) fn parse_exporter(
    system: &str,
    raw: RawExporter,
    line: usize,
) -> std::result::Result<ExporterConfig, String> {
    let only = |allowed: &[&str]| -> std::result::Result<(), String> {
        let given = [
            ("url_env", raw.url_env.is_some()),
            ("base_url", raw.base_url.is_some()),
            ("auth_env", raw.auth_env.is_some()),
            ("auth_header", raw.auth_header.is_some()),
            ("timeout_secs", raw.timeout_secs.is_some()),
            ("max_retries", raw.max_retries.is_some()),
            ("page_size", raw.page_size.is_some()),
            ("batch_rows", raw.batch_rows.is_some()),
        ];
        for (key, set) in given {
            if set && !allowed.contains(&key) {
                return Err(format!("`{key}` does not apply to kind = \"{}\"", raw.kind));
            }
        }
        Ok(())
    };
    let url_env = || {
        raw.url_env.clone().ok_or_else(|| {
            format!(
                "kind = \"{}\" needs url_env, the environment variable holding the connection URL",
                raw.kind
            )
        })
    };
    let kind = match raw.kind.as_str() {
        "postgres" => {
            only(&["url_env", "batch_rows"])?;
            ExporterKind::Postgres {
                url_env: url_env()?,
            }
        }
        "mysql" | "mariadb" => {
            only(&["url_env", "batch_rows"])?;
            ExporterKind::Mysql {
                url_env: url_env()?,
            }
        }
        "http" => {
            only(&[
                "base_url",
                "auth_env",
                "auth_header",
                "timeout_secs",
                "max_retries",
                "page_size",
                "batch_rows",
            ])?;
            let base = raw
                .base_url
                .as_deref()
                .ok_or("kind = \"http\" needs base_url")?;
            let mut base_url = url::Url::parse(base)
                .map_err(|e| format!("base_url `{base}` is not a URL: {e}"))?;
            if !matches!(base_url.scheme(), "http" | "https") {
                return Err(format!("base_url `{base}` must be http or https"));
            }
            if !base_url.path().ends_with('/') {
                let p = format!("{}/", base_url.path());
                base_url.set_path(&p);
            }
            let page_size = raw.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
            if page_size == 0 {
                return Err("page_size must be at least 1".into());
            }
            ExporterKind::Http(HttpExporter {
                base_url,
                auth_env: raw.auth_env.clone(),
                auth_header: raw
                    .auth_header
                    .clone()
                    .unwrap_or_else(|| "Authorization".into()),
                timeout: std::time::Duration::from_secs(
                    raw.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS).max(1),
                ),
                max_retries: raw.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
                page_size,
            })
        }
        "files" => {
            only(&["batch_rows"])?;
            ExporterKind::Files
        }
        "snapshot" => {
            only(&[])?;
            ExporterKind::Snapshot
        }
        other => {
            return Err(format!(
                "unknown exporter kind \"{other}\" (expected postgres, mysql, http, files or snapshot)"
            ));
        }
    };
    let batch_rows = raw.batch_rows.unwrap_or(DEFAULT_BATCH_ROWS);
    if !(1024..=1 << 22).contains(&batch_rows) {
        return Err(format!(
            "batch_rows must be between 1024 and 4194304, got {batch_rows}"
        ));
    }
    Ok(ExporterConfig {
        system: system.to_string(),
        kind,
        batch_rows,
        line,
    })
}

/// Validates one entity's `export.<system>` against the system's exporter; `None` for a
/// database exporter means the table named like the entity, all columns.
pub(crate) fn parse_entity_export(
    entity: &str,
    exporter: &ExporterConfig,
    raw: Option<RawEntityExport>,
    resolve: &dyn Fn(&str) -> std::result::Result<String, String>,
) -> std::result::Result<Option<ExportSpec>, String> {
    let kind = exporter.kind.name();
    let raw = match (raw, &exporter.kind) {
        (None, ExporterKind::Snapshot) => return Ok(None),
        (Some(_), ExporterKind::Snapshot) => {
            return Err(format!(
                "system `{}` is read as an existing snapshot (kind = \"snapshot\"); it takes no export table",
                exporter.system
            ));
        }
        (None, ExporterKind::Postgres { .. } | ExporterKind::Mysql { .. }) => {
            return Ok(Some(ExportSpec::Table {
                table: entity.to_string(),
                columns: None,
            }));
        }
        (None, _) => {
            return Err(format!(
                "system `{}` is exported with kind = \"{kind}\", so the entity needs export.{}",
                exporter.system, exporter.system
            ));
        }
        (Some(r), _) => r,
    };
    let given = |keys: &[(&str, bool)], allowed: &[&str]| -> std::result::Result<(), String> {
        for (key, set) in keys {
            if *set && !allowed.contains(key) {
                return Err(format!(
                    "export.{}.{key} does not apply to kind = \"{kind}\"",
                    exporter.system
                ));
            }
        }
        Ok(())
    };
    let keys = [
        ("table", raw.table.is_some()),
        ("query", raw.query.is_some()),
        ("columns", raw.columns.is_some()),
        ("path", raw.path.is_some()),
        ("records", raw.records.is_some()),
        ("pagination", raw.pagination.is_some()),
        ("params", !raw.params.is_empty()),
        ("json_paths", !raw.json_paths.is_empty()),
        ("format", raw.format.is_some()),
        ("has_header", raw.has_header.is_some()),
        ("delimiter", raw.delimiter.is_some()),
    ];
    match &exporter.kind {
        ExporterKind::Postgres { .. } | ExporterKind::Mysql { .. } => {
            given(&keys, &["table", "query", "columns"])?;
            match (raw.table, raw.query, raw.columns) {
                (Some(_), Some(_), _) => Err("give either table or query, not both".into()),
                (None, Some(_), Some(_)) => {
                    Err("columns applies to table; a query selects its own columns".into())
                }
                (None, Some(q), None) => {
                    if q.trim().is_empty() {
                        return Err("query is empty".into());
                    }
                    Ok(Some(ExportSpec::Query(q)))
                }
                (table, None, columns) => {
                    if let Some(cols) = &columns {
                        if cols.is_empty() {
                            return Err("columns is empty".into());
                        }
                        if let Some(c) = cols.iter().find(|c| c.trim().contains(' ')) {
                            return Err(format!(
                                "columns of a database table are plain names (types come from the database), got `{c}`"
                            ));
                        }
                    }
                    Ok(Some(ExportSpec::Table {
                        table: table.unwrap_or_else(|| entity.to_string()),
                        columns,
                    }))
                }
            }
        }
        ExporterKind::Http(_) => {
            given(
                &keys,
                &[
                    "path",
                    "records",
                    "pagination",
                    "params",
                    "columns",
                    "json_paths",
                ],
            )?;
            let path = raw.path.ok_or("an http export needs path")?;
            let mut columns =
                parse_columns(raw.columns.as_deref().ok_or(
                    "an http export needs columns, e.g. [\"id bigint\", \"email text\"]",
                )?)?;
            for (col, jp) in &raw.json_paths {
                let c = columns
                    .iter_mut()
                    .find(|c| &c.name == col)
                    .ok_or_else(|| format!("json_paths names unknown column `{col}`"))?;
                c.json_path = dotted(jp);
            }
            let size_param = |p: &RawPagination, default: &str| {
                p.size_param.clone().unwrap_or_else(|| default.to_string())
            };
            let pagination = match raw.pagination {
                None => Pagination::Page {
                    page_param: "page".into(),
                    size_param: "page_size".into(),
                    first_page: 1,
                },
                Some(p) => match p.style.as_str() {
                    "page" => Pagination::Page {
                        page_param: p.page_param.clone().unwrap_or_else(|| "page".into()),
                        size_param: size_param(&p, "page_size"),
                        first_page: p.first_page.unwrap_or(1),
                    },
                    "offset" => Pagination::Offset {
                        offset_param: p.offset_param.clone().unwrap_or_else(|| "offset".into()),
                        size_param: size_param(&p, "limit"),
                    },
                    "cursor" => Pagination::Cursor {
                        cursor_param: p.cursor_param.clone().unwrap_or_else(|| "cursor".into()),
                        cursor_path: dotted(p.cursor_path.as_deref().ok_or(
                            "pagination style \"cursor\" needs cursor_path, where each page gives the next cursor (e.g. \"meta.next_cursor\")",
                        )?),
                        size_param: size_param(&p, "limit"),
                    },
                    "next_link" => Pagination::NextLink {
                        next_path: p.next_path.as_deref().map(dotted),
                        size_param: size_param(&p, "limit"),
                    },
                    other => {
                        return Err(format!(
                            "unknown pagination style \"{other}\" (expected page, offset, cursor or next_link)"
                        ));
                    }
                },
            };
            Ok(Some(ExportSpec::Http(HttpSpec {
                path,
                records: raw.records.as_deref().map(dotted).unwrap_or_default(),
                pagination,
                params: raw.params,
                columns: std::mem::take(&mut columns),
            })))
        }
        ExporterKind::Files => {
            given(
                &keys,
                &["path", "format", "columns", "has_header", "delimiter"],
            )?;
            let path = raw
                .path
                .ok_or("a files export needs path (a file or a prefix)")?;
            let format = match raw.format.as_deref() {
                Some("csv") => FileFormat::Csv,
                Some("ndjson" | "jsonl" | "json") => FileFormat::Ndjson,
                Some("parquet") => FileFormat::Parquet,
                Some(other) => {
                    return Err(format!(
                        "unknown format \"{other}\" (expected csv, ndjson or parquet)"
                    ));
                }
                None => return Err("a files export needs format (csv, ndjson or parquet)".into()),
            };
            let delimiter = match raw.delimiter.as_deref() {
                None => b',',
                Some(d) if d.len() == 1 => d.as_bytes()[0],
                Some("\\t") => b'\t',
                Some(d) => return Err(format!("delimiter must be one character, got `{d}`")),
            };
            if format != FileFormat::Csv && (raw.has_header.is_some() || raw.delimiter.is_some()) {
                return Err("has_header and delimiter apply to format = \"csv\" only".into());
            }
            Ok(Some(ExportSpec::Files(FilesSpec {
                url: resolve(&path)?,
                format,
                columns: raw.columns.as_deref().map(parse_columns).transpose()?,
                has_header: raw.has_header.unwrap_or(true),
                delimiter,
            })))
        }
        ExporterKind::Snapshot => unreachable!("handled above"),
    }
}

fn dotted(path: &str) -> Vec<String> {
    path.split('.')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses `["id bigint", "amount decimal(12,2)", …]`.
pub fn parse_columns(specs: &[String]) -> std::result::Result<Vec<ColumnSpec>, String> {
    if specs.is_empty() {
        return Err("columns is empty".into());
    }
    let mut out: Vec<ColumnSpec> = Vec::with_capacity(specs.len());
    for spec in specs {
        let (name, ty) = spec.trim().split_once(char::is_whitespace).ok_or_else(|| {
            format!(
                "column `{spec}` needs a type, e.g. \"{} bigint\"",
                spec.trim()
            )
        })?;
        let ty = ty.trim().to_ascii_lowercase();
        let data_type = parse_type(&ty).ok_or_else(|| {
            format!(
                "column `{name}`: unknown type `{ty}` (expected smallint, integer, bigint, real, double, decimal(p,s), boolean, text, uuid, json, date, timestamp, timestamptz or bytea)"
            )
        })?;
        if out.iter().any(|c| c.name == name) {
            return Err(format!("column `{name}` is declared twice"));
        }
        out.push(ColumnSpec {
            name: name.to_string(),
            data_type,
            type_name: ty,
            json_path: vec![name.to_string()],
        });
    }
    Ok(out)
}

/// The declared type names and their Arrow types; uuid and json are kept as text.
pub fn parse_type(ty: &str) -> Option<DataType> {
    let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Some(match ty {
        "smallint" | "int2" | "int16" => DataType::Int16,
        "integer" | "int" | "int4" | "int32" => DataType::Int32,
        "bigint" | "int8" | "int64" => DataType::Int64,
        "real" | "float4" | "float32" => DataType::Float32,
        "double" | "double precision" | "float8" | "float64" => DataType::Float64,
        "boolean" | "bool" => DataType::Boolean,
        "text" | "string" | "varchar" | "uuid" | "json" | "jsonb" => DataType::Utf8,
        "date" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "timestamptz" | "timestamp with time zone" => utc(),
        "bytea" | "binary" | "bytes" => DataType::Binary,
        t => {
            let inner = t
                .strip_prefix("decimal(")
                .or_else(|| t.strip_prefix("numeric("))?
                .strip_suffix(')')?;
            let (p, s) = inner.split_once(',')?;
            let p: u8 = p.trim().parse().ok()?;
            let s: i8 = s.trim().parse().ok()?;
            if p == 0 || p > 38 || s < 0 || s as u8 > p {
                return None;
            }
            DataType::Decimal128(p, s)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_types_parse() {
        let cols = parse_columns(&[
            "id bigint".into(),
            "amount decimal(12, 2)".into(),
            "at timestamptz".into(),
        ])
        .unwrap();
        assert_eq!(cols[1].data_type, DataType::Decimal128(12, 2));
        assert_eq!(
            cols[2].data_type,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert!(
            parse_columns(&["id".into()])
                .unwrap_err()
                .contains("needs a type")
        );
        assert!(
            parse_columns(&["id money".into()])
                .unwrap_err()
                .contains("unknown type")
        );
        assert!(parse_type("decimal(40,2)").is_none());
    }
}
