//! `recon validate --connect`: each exporter's environment variables are set and its
//! database or API answers, checked without reading any data.

use std::time::Instant;

use mysql_async::prelude::Queryable;

use super::env_url;
use super::http::auth as http_auth;
use crate::error::{Error, Result};
use crate::job::JobConfig;
use crate::job::exporters::{ExporterConfig, ExporterKind, HttpExporter};

/// What checking one exporter found.
pub struct Connection {
    pub system: String,
    pub exporter: &'static str,
    /// What answered (`PostgreSQL 15.19 in 12 ms`), or why nothing did.
    pub outcome: Result<String>,
}

/// Checks every exporter of the job, in the job's order (source, then replica), each
/// whatever the others gave.
pub async fn check(job: &JobConfig) -> Vec<Connection> {
    let mut out = Vec::new();
    for system in [&job.source, &job.replica] {
        let Some(exporter) = job.exporters.get(system) else {
            continue;
        };
        out.push(Connection {
            system: system.clone(),
            exporter: exporter.kind.name(),
            outcome: check_one(exporter).await,
        });
    }
    out
}

async fn check_one(exporter: &ExporterConfig) -> Result<String> {
    let system = exporter.system.as_str();
    let clock = Instant::now();
    let answered = match &exporter.kind {
        ExporterKind::Postgres { url_env } => {
            let url = env_url(system, url_env)?;
            let (client, conn) = crate::db::postgres::connect(system, &url).await?;
            let row = client.query_one("SELECT version()", &[]).await;
            drop(client);
            conn.abort();
            let version: String = row
                .map_err(|e| Error::SourceUnavailable {
                    system: system.to_string(),
                    message: format!(
                        "PostgreSQL: SELECT version(): {}",
                        crate::db::postgres::describe(&e)
                    ),
                })?
                .get(0);
            // "PostgreSQL 15.19 (Debian …) on x86_64…": the name and version.
            version
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        }
        ExporterKind::Mysql { url_env } => {
            let url = env_url(system, url_env)?;
            let mut conn = crate::db::mysql::connect(system, &url, |b| b).await?;
            let version: Option<String> =
                conn.query_first("SELECT VERSION()").await.map_err(|e| {
                    Error::SourceUnavailable {
                        system: system.to_string(),
                        message: format!("MySQL: SELECT VERSION(): {e}"),
                    }
                })?;
            let _ = conn.disconnect().await;
            format!("MySQL {}", version.unwrap_or_default())
        }
        ExporterKind::Http(http) => check_http(system, http).await?,
        ExporterKind::Files => return Ok("reads files from the lake: nothing to connect".into()),
        ExporterKind::Snapshot => {
            return Ok("snapshots written by another tool: nothing to connect".into());
        }
    };
    Ok(format!(
        "{answered} answered in {} ms",
        clock.elapsed().as_millis()
    ))
}

/// A GET of the base URL with the auth header: any HTTP answer but 401 and 403 means
/// the API is there and takes the credentials (the base URL itself need not be a
/// resource, so 404 is an answer too).
async fn check_http(system: &str, http: &HttpExporter) -> Result<String> {
    let auth = http_auth(system, http)?;
    let mut request = super::http::client(http)?.get(http.base_url.clone());
    if let Some(value) = &auth {
        request = request.header(http.auth_header.as_str(), value);
    }
    let response = request.send().await.map_err(|e| Error::SourceUnavailable {
        system: system.to_string(),
        message: format!("GET {}: {}", http.base_url, e.without_url()),
    })?;
    let status = response.status();
    if matches!(status.as_u16(), 401 | 403) {
        return Err(Error::Usage(format!(
            "system `{system}`: GET {} answered {status}: the API refuses the credentials{}",
            http.base_url,
            match &http.auth_env {
                Some(var) => format!(" in {var}"),
                None => " (the exporter names no auth_env)".to_string(),
            }
        )));
    }
    Ok(format!("the API (HTTP {})", status.as_u16()))
}
