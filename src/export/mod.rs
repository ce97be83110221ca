//! The export stage: each system's entities, read from a database, an HTTP API or files,
//! streamed to Parquet in the snapshot layout the diff reads.
//!
//! Commit discipline: an export writes `part-{export_id}-00000.parquet` into each
//! entity's snapshot folder, and only once every entity of the system has been written
//! does it put each folder's `_manifest.json`, which names the files of the snapshot.
//! A reader of a folder with a manifest reads exactly those files, so a failed or
//! half-written export never looks complete; parts of older exports are removed after
//! the new manifests are in place.

pub mod builder;
pub mod connect;
mod files;
mod http;
mod mysql;
mod postgres;

use std::collections::BTreeMap;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::Serialize;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::job::{EntityConfig, JobConfig};
use crate::snapshot::manifest::{
    ManifestColumn, SNAPSHOT_MANIFEST_FORMAT, SnapshotManifest, SnapshotManifestFile, put_manifest,
};
use crate::store::{self, Location};
use crate::write::ParquetSink;
use builder::{BatchBuilder, schema_of};

use crate::job::exporters::{ExportSpec, ExporterConfig, ExporterKind};

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub run_date: NaiveDate,
    /// Systems to export; empty means every system with an exporter.
    pub systems: Vec<String>,
    /// Entities to export; empty means all.
    pub entities: Vec<String>,
    /// The run date's lock, checked before the snapshots are committed.
    pub lock: Option<std::sync::Arc<crate::lock::HeldLock>>,
}

/// What an export did, per system and entity (printed, and kept in the run summary).
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub systems: Vec<SystemReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SystemReport {
    pub system: String,
    pub exporter: String,
    pub export_id: String,
    pub duration_ms: u64,
    pub entities: Vec<EntityReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EntityReport {
    pub entity: String,
    pub rows: u64,
    pub bytes: u64,
    pub url: String,
    pub duration_ms: u64,
}

/// One entity of the system being exported: what to read and where it goes.
pub(crate) struct Target<'a> {
    pub entity: &'a EntityConfig,
    pub spec: &'a ExportSpec,
    /// The snapshot folder.
    pub location: Location,
    pub export_id: &'a str,
    /// Filled in by the exporter once the entity's file is complete.
    pub done: Option<Written>,
    /// The part file, once created; removed if the export fails.
    pub part: Option<String>,
}

/// An entity's finished file.
pub(crate) struct Written {
    pub source: String,
    pub schema: SchemaRef,
    pub rows: u64,
    pub size: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

impl Target<'_> {
    pub fn part_name(&self) -> String {
        format!("part-{}-00000.parquet", self.export_id)
    }

    /// Starts the entity's Parquet file.
    pub fn sink(&mut self, schema: SchemaRef, row_group_rows: usize) -> Result<ParquetSink> {
        let name = self.part_name();
        self.part = Some(name.clone());
        ParquetSink::create(&self.location, name, schema, row_group_rows)
    }
}

/// A sink plus the bookkeeping every exporter needs.
pub(crate) struct EntityWriter {
    sink: ParquetSink,
    schema: SchemaRef,
    source: String,
    started_at: DateTime<Utc>,
}

impl EntityWriter {
    pub fn new(
        target: &mut Target<'_>,
        schema: SchemaRef,
        source: String,
        row_group_rows: usize,
    ) -> Result<Self> {
        let started_at = Utc::now();
        let sink = target.sink(schema.clone(), row_group_rows)?;
        Ok(EntityWriter {
            sink,
            schema,
            source,
            started_at,
        })
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.sink.write(batch).await
    }

    pub fn rows(&self) -> u64 {
        self.sink.rows()
    }

    pub async fn finish(self, target: &mut Target<'_>) -> Result<()> {
        let (rows, size) = self.sink.close().await?;
        target.done = Some(Written {
            source: self.source,
            schema: self.schema,
            rows,
            size,
            started_at: self.started_at,
            finished_at: Utc::now(),
        });
        Ok(())
    }
}

/// A fresh export id: UTC time (sortable) and a random suffix.
fn new_export_id() -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", Utc::now().format("%Y%m%dT%H%M%SZ"), &suffix[..8])
}

/// Whether the job exports anything itself.
pub fn has_exporters(job: &JobConfig) -> bool {
    job.exporters.values().any(|e| e.kind.writes_snapshots())
}

/// Exports the selected systems and entities for one run date. The selection names
/// systems with an exporter and entities of the job, as the command line's
/// `ExportConfig` checks before any I/O.
pub async fn export(job: &JobConfig, opts: &ExportOptions) -> Result<ExportReport> {
    let mut systems = Vec::new();
    for system in [&job.source, &job.replica] {
        let Some(exporter) = job.exporters.get(system) else {
            continue;
        };
        if !exporter.kind.writes_snapshots()
            || (!opts.systems.is_empty() && !opts.systems.contains(system))
        {
            continue;
        }
        systems.push(export_system(job, exporter, opts).await?);
    }
    Ok(ExportReport { systems })
}

async fn export_system(
    job: &JobConfig,
    exporter: &ExporterConfig,
    opts: &ExportOptions,
) -> Result<SystemReport> {
    let clock = Instant::now();
    let export_id = new_export_id();
    let system = exporter.system.as_str();
    let mut targets = Vec::new();
    for entity in &job.entities {
        if !opts.entities.is_empty() && !opts.entities.contains(&entity.name) {
            continue;
        }
        let Some(spec) = entity.exports.get(system) else {
            continue;
        };
        let url = crate::snapshot::layout::snapshot_url(job, entity, system, opts.run_date);
        if url.ends_with(".parquet") {
            return Err(Error::Job {
                path: job.path.clone(),
                line: entity.line,
                message: format!(
                    "entity `{}`: the {system} snapshot is exported, so snapshots.{} must be a folder, not a file ({url})",
                    entity.name,
                    if system == job.source {
                        "source"
                    } else {
                        "replica"
                    }
                ),
            });
        }
        targets.push(Target {
            entity,
            spec,
            location: store::open(&url)?,
            export_id: &export_id,
            done: None,
            part: None,
        });
    }
    info!(system, exporter = exporter.kind.name(), export_id = %export_id, entities = targets.len(), "export");
    let result = match &exporter.kind {
        ExporterKind::Postgres { url_env } => {
            postgres::export(job, exporter, &env_url(system, url_env)?, &mut targets).await
        }
        ExporterKind::Mysql { url_env } => {
            mysql::export(job, exporter, &env_url(system, url_env)?, &mut targets).await
        }
        ExporterKind::Http(http) => http::export(job, exporter, http, &mut targets).await,
        ExporterKind::Files => files::export(job, exporter, opts.run_date, &mut targets).await,
        ExporterKind::Snapshot => Ok(BTreeMap::new()),
    };
    let watermark = match result {
        Ok(w) => w,
        Err(e) => {
            remove_parts(&targets).await;
            return Err(e);
        }
    };
    // Every entity is written: commit each folder with its manifest, unless the lock
    // was lost meanwhile.
    if let Some(lock) = &opts.lock
        && let Err(e) = lock.check().await
    {
        remove_parts(&targets).await;
        return Err(e);
    }
    let mut reports = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let Some(w) = &t.done else {
            remove_parts(&targets[i..]).await;
            return Err(Error::Internal(format!(
                "export of entity `{}` from {system} finished without a file",
                t.entity.name
            )));
        };
        let manifest = SnapshotManifest {
            format_version: SNAPSHOT_MANIFEST_FORMAT,
            job: job.name.clone(),
            system: system.to_string(),
            entity: t.entity.name.clone(),
            run_date: opts.run_date,
            export_id: export_id.clone(),
            exporter: exporter.kind.name().to_string(),
            source: w.source.clone(),
            started_at: w.started_at,
            finished_at: w.finished_at,
            rows: w.rows,
            files: vec![SnapshotManifestFile {
                path: t.part_name(),
                rows: w.rows,
                size: w.size,
            }],
            schema: w
                .schema
                .fields()
                .iter()
                .map(|f| ManifestColumn {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                    nullable: f.is_nullable(),
                })
                .collect(),
            watermark: watermark.clone(),
        };
        if let Err(e) = put_manifest(&t.location, &manifest).await {
            remove_parts(&targets[i..]).await;
            return Err(e);
        }
        reports.push(EntityReport {
            entity: t.entity.name.clone(),
            rows: w.rows,
            bytes: w.size,
            url: t.location.url(),
            duration_ms: (w.finished_at - w.started_at).num_milliseconds().max(0) as u64,
        });
    }
    for t in &targets {
        remove_stale_parts(t).await;
    }
    Ok(SystemReport {
        system: system.to_string(),
        exporter: exporter.kind.name().to_string(),
        export_id,
        duration_ms: clock.elapsed().as_millis() as u64,
        entities: reports,
    })
}

/// The connection URL from the environment variable the job names.
fn env_url(system: &str, var: &str) -> Result<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(Error::Usage(format!(
            "system `{system}`: environment variable {var} (the exporter's url_env) is not set"
        ))),
    }
}

/// Best-effort removal of the parts a failed export wrote.
async fn remove_parts(targets: &[Target<'_>]) {
    for t in targets {
        if let Some(part) = &t.part {
            let path = t.location.child(part).prefix;
            match t.location.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    warn!(file = %path, error = %e, "could not remove a failed export's part")
                }
            }
        }
    }
}

/// After a commit, removes the parts of older exports from the snapshot folder.
async fn remove_stale_parts(t: &Target<'_>) {
    let keep = t.part_name();
    let listed: std::result::Result<Vec<_>, _> = t
        .location
        .store
        .list(Some(&t.location.prefix))
        .try_collect()
        .await;
    let Ok(objects) = listed else {
        return;
    };
    for o in objects {
        let name = o.location.filename().unwrap_or("");
        let direct = o
            .location
            .prefix_match(&t.location.prefix)
            .is_some_and(|p| p.count() == 1);
        if direct
            && name.starts_with("part-")
            && name.ends_with(".parquet")
            && name != keep
            && let Err(e) = t.location.store.delete(&o.location).await
        {
            warn!(file = %o.location, error = %e, "could not remove an older export's part");
        }
    }
}

/// Quotes a SQL identifier with `quote`, doubling embedded quotes; dotted names are
/// quoted part by part (`schema.table`).
pub(crate) fn quote_ident(name: &str, quote: char) -> String {
    name.split('.')
        .map(|p| {
            let doubled = p.replace(quote, &format!("{quote}{quote}"));
            format!("{quote}{doubled}{quote}")
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The SELECT a table export runs.
pub(crate) fn table_select(table: &str, columns: Option<&[String]>, quote: char) -> String {
    let cols = match columns {
        None => "*".to_string(),
        Some(c) => c
            .iter()
            .map(|c| quote_ident(c, quote))
            .collect::<Vec<_>>()
            .join(", "),
    };
    format!("SELECT {cols} FROM {}", quote_ident(table, quote))
}

/// What a database exporter reads for `target`: the statement (the table's columns, or
/// the job's query without its trailing `;`) and how errors name it (`table …` or
/// `query …`). `quote` is the database's identifier quote.
pub(crate) fn entity_sql(target: &Target<'_>, quote: char) -> (String, String) {
    match target.spec {
        ExportSpec::Table { table, columns } => (
            table_select(table, columns.as_deref(), quote),
            format!("table {table}"),
        ),
        ExportSpec::Query(q) => (
            q.trim().trim_end_matches(';').to_string(),
            format!("query {}", q.trim()),
        ),
        other => unreachable!("validated: only tables and queries reach a database: {other:?}"),
    }
}

/// The opening every database exporter shares, once the statement's columns are known
/// (`fields`, mapped to Arrow types): refuses a column name returned twice, and starts
/// the batch builder and the entity's file. Returns the column names, for errors.
pub(crate) fn open_entity(
    target: &mut Target<'_>,
    system: &str,
    source: &str,
    fields: Vec<(String, DataType)>,
    batch_rows: usize,
) -> Result<(Vec<String>, BatchBuilder, EntityWriter)> {
    let entity = target.entity.name.clone();
    for (i, (name, _)) in fields.iter().enumerate() {
        if fields[..i].iter().any(|(n, _)| n == name) {
            return Err(data_error(
                system,
                &entity,
                format!("{source}: column `{name}` appears twice; alias it in a query"),
            ));
        }
    }
    let names: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
    let schema = schema_of(fields);
    let batch = BatchBuilder::try_new(schema.clone(), batch_rows)
        .map_err(|m| data_error(system, &entity, m))?;
    let writer = EntityWriter::new(target, schema, source.to_string(), batch_rows)?;
    Ok((names, batch, writer))
}

/// The error for a value or column the exporter cannot take, naming what it could.
pub(crate) fn data_error(system: &str, entity: &str, message: impl Into<String>) -> Error {
    Error::Export {
        system: system.to_string(),
        entity: entity.to_string(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_per_part() {
        assert_eq!(quote_ident("public.users", '"'), "\"public\".\"users\"");
        assert_eq!(quote_ident("we\"ird", '"'), "\"we\"\"ird\"");
        assert_eq!(
            table_select("users", Some(&["id".into(), "e`mail".into()]), '`'),
            "SELECT `id`, `e``mail` FROM `users`"
        );
    }
}
