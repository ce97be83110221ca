//! The apply stage: a committed run's corrections for one system, applied to its
//! database in batches, each batch one transaction.
//!
//! - Order: inserts and updates parents first (the manifest's `apply_order`), deletes
//!   and soft deletes children first.
//! - Guarded: an update or delete matches the row only if every column still holds the
//!   value the snapshot saw (`expected`); an insert only if the key is absent (or, under
//!   a soft-delete policy, present and soft-deleted). A row changed since the snapshot is
//!   skipped as `stale`, never overwritten.
//! - Idempotent: the ledger table `recon_applied` in the target database records each
//!   correction's outcome in the same transaction as the change; a correction already
//!   in the ledger is skipped as `already_applied`, so a second apply changes nothing
//!   and an interrupted one finishes the rest.

mod mysql;
mod postgres;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{NaiveDate, Utc};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use tracing::info;

use crate::error::{Error, Result};
use crate::job::exporters::{ExportSpec, ExporterKind};
use crate::job::{DeletePolicy, JobConfig};
use crate::store;
use crate::write::{self, LatestPointer, Manifest, ParquetSink};

pub use crate::write::value::Value;

/// Ledger table created in the target database.
pub const LEDGER_TABLE: &str = "recon_applied";
pub const DEFAULT_BATCH_ROWS: usize = 500;

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub run_date: NaiveDate,
    /// A run id; default the run date's latest committed run.
    pub run_id: Option<String>,
    pub system: String,
    pub entities: Vec<String>,
    pub dry_run: bool,
    /// Apply a run whose guardrail tripped (its withheld entities have no corrections).
    pub allow_guardrail_tripped: bool,
    pub batch_rows: usize,
    /// The run date's lock, checked before each batch is committed.
    pub lock: Option<std::sync::Arc<crate::lock::HeldLock>>,
}

/// What happened to one correction.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied,
    Stale,
    AlreadyApplied,
    Failed(String),
    /// Dry run: the guard matches now.
    WouldApply,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Stale => "stale",
            Outcome::AlreadyApplied => "already_applied",
            Outcome::Failed(_) => "failed",
            Outcome::WouldApply => "would_apply",
        }
    }
}

/// One correction row.
#[derive(Debug, Clone)]
pub struct Correction {
    pub id: String,
    pub op: String,
    pub changed: Vec<String>,
    /// Every payload column (target names) with its new value.
    pub values: Vec<(String, Value)>,
    /// Every payload column with the value the snapshot saw (empty for inserts).
    pub expected: Vec<(String, Value)>,
}

impl Target {
    /// The expected columns an update or delete is guarded on: the version column when
    /// declared, else every non-key column the snapshot saw.
    pub fn guard_columns<'a>(&self, c: &'a Correction) -> Vec<&'a (String, Value)> {
        c.expected
            .iter()
            .filter(|(col, _)| match &self.version {
                Some(v) => col == v,
                None => !self.key.contains(col),
            })
            .collect()
    }
}

impl Correction {
    pub fn value(&self, col: &str) -> &Value {
        self.values
            .iter()
            .find(|(c, _)| c == col)
            .map(|(_, v)| v)
            .unwrap_or(&Value::Null)
    }
}

/// One entity's corrections and where they go.
#[derive(Debug, Clone)]
pub struct Target {
    pub entity: String,
    pub table: String,
    /// Key columns, target names.
    pub key: Vec<String>,
    /// The soft-delete column and what marks a row deleted, under a soft policy.
    pub soft: Option<SoftTarget>,
    /// The version column (target name) guards use alone, when the entity declares one.
    pub version: Option<String>,
    pub corrections: Vec<Correction>,
}

#[derive(Debug, Clone)]
pub struct SoftTarget {
    pub column: String,
    /// `Some(v)`: a boolean column is deleted when it equals v; `None`: deleted when not NULL.
    pub deleted_value: Option<bool>,
}

/// The apply summary, per entity and op (printed, and the report's totals).
#[derive(Debug, Clone, Serialize)]
pub struct ApplySummary {
    pub job: String,
    pub run_id: String,
    pub run_date: NaiveDate,
    pub system: String,
    pub apply_id: String,
    pub dry_run: bool,
    /// entity → op → outcome → count.
    pub counts: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    pub report: Option<String>,
    /// Dry run: the statements it would run, with the rows each would touch.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statements: Vec<String>,
}

impl ApplySummary {
    pub fn total(&self, outcome: &str) -> u64 {
        self.counts
            .values()
            .flat_map(|ops| ops.values())
            .filter_map(|o| o.get(outcome))
            .sum()
    }
}

/// The database connection of the system being applied to.
pub(crate) enum Db {
    Pg(postgres::Pg),
    My(mysql::My),
}

/// Applies (or with `dry_run` checks) one committed run's corrections for one system.
pub async fn apply(job: &JobConfig, opts: &ApplyOptions) -> Result<ApplySummary> {
    if opts.system != job.source && opts.system != job.replica {
        return Err(Error::Usage(format!(
            "system `{}` is not in job {} (systems: {}, {})",
            opts.system,
            job.path.display(),
            job.source,
            job.replica
        )));
    }
    for e in &opts.entities {
        if job.entity(e).is_none() {
            return Err(Error::Usage(format!(
                "entity `{e}` is not in job {}",
                job.path.display()
            )));
        }
    }
    let exporter = job.exporters.get(&opts.system).ok_or_else(|| {
        Error::Usage(format!(
            "system `{}` has no [exporters.{}] table: apply connects through the exporter's url_env (kind postgres or mysql)",
            opts.system, opts.system
        ))
    })?;
    let url_env = match &exporter.kind {
        ExporterKind::Postgres { url_env } | ExporterKind::Mysql { url_env } => url_env.clone(),
        other => {
            return Err(Error::Usage(format!(
                "system `{}` is exported with kind = \"{}\"; apply needs a postgres or mysql database",
                opts.system,
                other.name()
            )));
        }
    };
    let output = store::open(&job.output)?;
    let manifest = committed_run(&output, opts.run_date, opts.run_id.as_deref()).await?;
    if manifest.status != "success" && !opts.allow_guardrail_tripped {
        return Err(Error::Usage(format!(
            "run {} of {} tripped a guardrail (withheld: {}); review it, then rerun it with a raised --max-correction-share, or pass --allow-guardrail-tripped to apply the other entities' corrections",
            manifest.run_id,
            manifest.run_date,
            manifest.withheld.join(", ")
        )));
    }
    let targets = load_targets(job, opts, &output, &manifest).await?;
    let url = std::env::var(&url_env)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Error::Usage(format!(
                "system `{}`: environment variable {url_env} (the exporter's url_env) is not set",
                opts.system
            ))
        })?;
    let mut db = match &exporter.kind {
        ExporterKind::Postgres { .. } => Db::Pg(postgres::Pg::connect(&opts.system, &url).await?),
        _ => Db::My(mysql::My::connect(&opts.system, &url).await?),
    };
    // Every column apply names must be in its table, checked before anything is
    // written: a guard on a column the table lacks would fail row by row.
    for target in &targets {
        let columns = match &mut db {
            Db::Pg(p) => p.columns(&target.table).await?,
            Db::My(m) => m.columns(&target.table).await?,
        };
        check_target_columns(target, &columns, &opts.system)?;
    }
    let apply_id = format!(
        "{}-{}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut summary = ApplySummary {
        job: job.name.clone(),
        run_id: manifest.run_id.clone(),
        run_date: manifest.run_date,
        system: opts.system.clone(),
        apply_id: apply_id.clone(),
        dry_run: opts.dry_run,
        counts: BTreeMap::new(),
        report: None,
        statements: vec![],
    };
    if !opts.dry_run {
        match &mut db {
            Db::Pg(p) => p.ensure_ledger().await?,
            Db::My(m) => m.ensure_ledger().await?,
        }
    }
    let mut log: Vec<(String, String, String, Outcome)> = Vec::new();
    // Inserts and updates parents first, then deletes children first.
    let phases: [(&[&str], bool); 2] = [
        (&["insert", "update"], false),
        (&["delete", "soft_delete"], true),
    ];
    for (ops, reverse) in phases {
        let mut order: Vec<&Target> = targets.iter().collect();
        if reverse {
            order.reverse();
        }
        for target in order {
            for op in ops {
                let cs: Vec<&Correction> =
                    target.corrections.iter().filter(|c| c.op == *op).collect();
                if cs.is_empty() {
                    continue;
                }
                let ctx = Ctx {
                    job: &job.name,
                    run_id: &manifest.run_id,
                };
                for batch in cs.chunks(opts.batch_rows.max(1)) {
                    let outcomes = if opts.dry_run {
                        match &mut db {
                            Db::Pg(p) => p.check(target, batch).await?,
                            Db::My(m) => m.check(target, batch).await?,
                        }
                    } else {
                        // A batch is one transaction: committed only while the lock
                        // is still this apply's.
                        if let Some(lock) = &opts.lock {
                            lock.check().await?;
                        }
                        match &mut db {
                            Db::Pg(p) => p.apply_batch(&ctx, target, batch).await?,
                            Db::My(m) => m.apply_batch(&ctx, target, batch).await?,
                        }
                    };
                    for (c, o) in batch.iter().zip(outcomes) {
                        *summary
                            .counts
                            .entry(target.entity.clone())
                            .or_default()
                            .entry(op.to_string())
                            .or_default()
                            .entry(o.as_str().to_string())
                            .or_default() += 1;
                        log.push((target.entity.clone(), c.id.clone(), op.to_string(), o));
                    }
                }
                if opts.dry_run {
                    let n = cs.len();
                    let matching = summary.counts[&target.entity][*op]
                        .get(Outcome::WouldApply.as_str())
                        .copied()
                        .unwrap_or(0) as usize;
                    let sql = match &db {
                        Db::Pg(_) => postgres::statement_text(target, cs[0]),
                        Db::My(_) => mysql::statement_text(target, cs[0]),
                    };
                    summary.statements.push(format!(
                        "-- {}: {n} {op} correction(s), {matching} row(s) would be touched, {} stale\n{sql}",
                        target.entity,
                        n - matching
                    ));
                }
                info!(entity = %target.entity, op, corrections = cs.len(), "applied");
            }
        }
    }
    if !opts.dry_run {
        let rel = format!(
            "applies/run_date={}/run_id={}/system={}/apply-{apply_id}.parquet",
            manifest.run_date, manifest.run_id, opts.system
        );
        write_report(&output, &rel, &summary, &log).await?;
        summary.report = Some(output.child(&rel).url());
    }
    Ok(summary)
}

/// Checks that the table has every column apply touches or guards on: the keys, the
/// version and soft-delete columns, and each column of the corrections.
fn check_target_columns(target: &Target, columns: &[String], system: &str) -> Result<()> {
    if columns.is_empty() {
        return Err(Error::Usage(format!(
            "entity `{}`: table {} is not in the {system} database (or this user cannot see it)",
            target.entity, target.table
        )));
    }
    let named = target
        .key
        .iter()
        .map(|k| (k.as_str(), "key column"))
        .chain(
            target
                .version
                .iter()
                .map(|v| (v.as_str(), "version column")),
        )
        .chain(
            target
                .soft
                .iter()
                .map(|s| (s.column.as_str(), "soft-delete column")),
        )
        .chain(target.corrections.first().into_iter().flat_map(|c| {
            c.values
                .iter()
                .chain(&c.expected)
                .map(|(col, _)| (col.as_str(), "column of the corrections"))
        }));
    for (col, what) in named {
        if !columns.iter().any(|c| c == col) {
            return Err(Error::Usage(format!(
                "entity `{}`: table {} in the {system} database has no {what} `{col}` (its columns: {})",
                target.entity,
                target.table,
                columns.join(", ")
            )));
        }
    }
    Ok(())
}

pub(crate) struct Ctx<'a> {
    pub job: &'a str,
    pub run_id: &'a str,
}

/// The manifest of the given run, or of the run date's latest committed run.
pub async fn committed_run(
    output: &store::Location,
    run_date: NaiveDate,
    run_id: Option<&str>,
) -> Result<Manifest> {
    let rel = match run_id {
        Some(id) => {
            crate::run::check_run_id(id)?;
            format!(
                "runs/run_date={run_date}/run_id={id}/{}",
                write::MANIFEST_FILE
            )
        }
        None => {
            let pointer: LatestPointer =
                write::get_json(output, &format!("runs/run_date={run_date}/_latest.json"))
                    .await?
                    .ok_or_else(|| {
                        Error::Usage(format!(
                            "no committed run for {run_date} under {}",
                            output.url()
                        ))
                    })?;
            pointer.manifest
        }
    };
    write::get_json::<Manifest>(output, &rel)
        .await?
        .ok_or_else(|| {
            Error::Usage(format!(
                "run {} of {run_date} is not committed (no {})",
                run_id.unwrap_or("(latest)"),
                output.child(&rel).url()
            ))
        })
}

async fn load_targets(
    job: &JobConfig,
    opts: &ApplyOptions,
    output: &store::Location,
    manifest: &Manifest,
) -> Result<Vec<Target>> {
    let is_replica = opts.system == job.replica;
    let mut targets = Vec::new();
    for name in &manifest.apply_order {
        if !opts.entities.is_empty() && !opts.entities.contains(name) {
            continue;
        }
        let Some(entity) = job.entity(name) else {
            return Err(Error::Usage(format!(
                "run {} has entity `{name}`, which job {} no longer declares",
                manifest.run_id,
                job.path.display()
            )));
        };
        let target_name = |c: &str| -> String {
            if is_replica {
                entity
                    .rename
                    .get(c)
                    .cloned()
                    .unwrap_or_else(|| c.to_string())
            } else {
                c.to_string()
            }
        };
        let table = match entity.exports.get(&opts.system) {
            Some(ExportSpec::Table { table, .. }) => table.clone(),
            Some(_) => {
                return Err(Error::Job {
                    path: job.path.clone(),
                    line: entity.line,
                    message: format!(
                        "entity `{name}`: the {} export is a query, so apply does not know the table; export it with table = \"…\"",
                        opts.system
                    ),
                });
            }
            None => name.clone(),
        };
        let soft = match &entity.deletes {
            DeletePolicy::Soft {
                column,
                deleted_value,
            } if is_replica => Some(SoftTarget {
                column: target_name(column),
                deleted_value: *deleted_value,
            }),
            _ => None,
        };
        let mut corrections = Vec::new();
        for f in manifest.files.iter().filter(|f| {
            f.kind == "corrections"
                && f.entity.as_deref() == Some(name)
                && f.system.as_deref() == Some(&opts.system)
        }) {
            corrections.extend(read_corrections(output, &f.path).await?);
        }
        let version = entity.version.as_deref().map(target_name);
        // Never unguarded: with a version column every update and delete is guarded on
        // it, so a correction whose expected row lacks it is refused, not applied.
        if let Some(v) = &version
            && let Some(c) = corrections
                .iter()
                .find(|c| c.op != "insert" && !c.expected.iter().any(|(col, _)| col == v))
        {
            return Err(Error::Usage(format!(
                "entity `{name}`: the job's version column `{v}` is not in correction {} of run {} \
                 (its expected row has {}), so apply cannot guard it; fix `version` in {} or rerun the diff",
                c.id,
                manifest.run_id,
                c.expected
                    .iter()
                    .map(|(col, _)| format!("`{col}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                job.path.display()
            )));
        }
        targets.push(Target {
            entity: name.clone(),
            table,
            key: entity.key.iter().map(|k| target_name(k)).collect(),
            version,
            soft,
            corrections,
        });
    }
    Ok(targets)
}

/// Reads one correction file (small: the guardrail caps corrections at a share of rows).
pub(crate) async fn read_corrections(
    output: &store::Location,
    rel: &str,
) -> Result<Vec<Correction>> {
    let mut out = Vec::new();
    for batch in CorrectionBatches::open(output, rel).await? {
        out.extend(batch?);
    }
    Ok(out)
}

/// One correction file, read batch by batch.
pub(crate) struct CorrectionBatches {
    url: String,
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
}

impl CorrectionBatches {
    pub(crate) async fn open(output: &store::Location, rel: &str) -> Result<Self> {
        let location = output.child(rel);
        let storage = |source| Error::Storage {
            location: location.url(),
            source,
        };
        let bytes = location
            .store
            .get(&location.prefix)
            .await
            .map_err(storage)?
            .bytes()
            .await
            .map_err(storage)?;
        let bad = |message: String| Error::BadFile {
            path: location.url(),
            message,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| bad(e.to_string()))?
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(CorrectionBatches {
            url: location.url(),
            reader,
        })
    }

    /// The corrections of one batch read from the file at `url`.
    pub(crate) fn corrections(url: &str, b: &RecordBatch) -> Result<Vec<Correction>> {
        let bad = |message: String| Error::BadFile {
            path: url.to_string(),
            message,
        };
        let mut out = Vec::with_capacity(b.num_rows());
        let schema = b.schema();
        let col = |n: &str| {
            b.column_by_name(n)
                .ok_or_else(|| bad(format!("no column `{n}`")))
        };
        let ids = col("correction_id")?.as_string::<i32>().clone();
        let ops = col("op")?.as_string::<i32>().clone();
        let changed = col("changed_fields")?.as_list::<i32>().clone();
        let expected = col("expected")?.as_struct().clone();
        let payload: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| {
                !matches!(
                    schema.field(i).name().as_str(),
                    "correction_id" | "op" | "changed_fields" | "expected"
                )
            })
            .collect();
        for r in 0..b.num_rows() {
            let names = changed.value(r);
            let names = names.as_string::<i32>();
            let values = payload
                .iter()
                .map(|&i| {
                    Ok((
                        schema.field(i).name().clone(),
                        Value::from_array(b.column(i).as_ref(), r).map_err(&bad)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            let exp = if expected.is_null(r) {
                vec![]
            } else {
                expected
                    .fields()
                    .iter()
                    .zip(expected.columns())
                    .map(|(f, a)| {
                        Ok((
                            f.name().clone(),
                            Value::from_array(a.as_ref(), r).map_err(&bad)?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?
            };
            out.push(Correction {
                id: ids.value(r).to_string(),
                op: ops.value(r).to_string(),
                changed: (0..names.len())
                    .map(|i| names.value(i).to_string())
                    .collect(),
                values,
                expected: exp,
            });
        }
        Ok(out)
    }
}

impl Iterator for CorrectionBatches {
    type Item = Result<Vec<Correction>>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = match self.reader.next()? {
            Ok(b) => b,
            Err(e) => {
                return Some(Err(Error::BadFile {
                    path: self.url.clone(),
                    message: format!("not a readable correction file: {e}"),
                }));
            }
        };
        Some(Self::corrections(&self.url, &batch))
    }
}

async fn write_report(
    output: &store::Location,
    rel: &str,
    summary: &ApplySummary,
    log: &[(String, String, String, Outcome)],
) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("apply_id", DataType::Utf8, false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new("system", DataType::Utf8, false),
        Field::new("entity", DataType::Utf8, false),
        Field::new("correction_id", DataType::Utf8, false),
        Field::new("op", DataType::Utf8, false),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let mut cols: Vec<StringBuilder> = (0..8).map(|_| StringBuilder::new()).collect();
    let mut at = TimestampMicrosecondBuilder::new();
    let now = Utc::now().timestamp_micros();
    for (entity, id, op, outcome) in log {
        for (i, v) in [
            summary.apply_id.as_str(),
            summary.run_id.as_str(),
            summary.system.as_str(),
            entity,
            id,
            op,
            outcome.as_str(),
        ]
        .into_iter()
        .enumerate()
        {
            cols[i].append_value(v);
        }
        match outcome {
            Outcome::Failed(m) => cols[7].append_value(m),
            _ => cols[7].append_null(),
        }
        at.append_value(now);
    }
    let mut arrays: Vec<Arc<dyn Array>> =
        cols.iter_mut().map(|c| Arc::new(c.finish()) as _).collect();
    arrays.push(Arc::new(at.finish().with_timezone("UTC")));
    let batch = RecordBatch::try_new(schema.clone(), arrays)
        .map_err(|e| Error::Internal(format!("apply report: {e}")))?;
    let mut sink = ParquetSink::create(output, rel.to_string(), schema, 64 * 1024)?;
    sink.write(&batch).await?;
    sink.close().await?;
    Ok(())
}

/// Ids of corrections already seen, for the batch being applied.
pub(crate) type Seen = HashSet<String>;
