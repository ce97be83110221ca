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
//!
//! The loop is written once (`batch`) over a `Dialect`; `postgres` and `mysql` own their
//! SQL (`queries/apply/<dialect>/*.sql`), quoting, transactions and row counts. Ops are
//! parsed into [`Op`] where a correction file is read (`corrections`).

mod batch;
mod corrections;
mod mysql;
mod postgres;
mod report;

use std::collections::{BTreeMap, HashSet};

use chrono::{NaiveDate, Utc};
use serde::Serialize;

use self::batch::Dialect;
use self::corrections::read_corrections;
use crate::error::{Error, Result};
use crate::job::exporters::{ExportSpec, ExporterKind};
use crate::job::{DeletePolicy, JobConfig};
use crate::store;
use crate::write::vocabulary::Op;
use crate::write::{self, LatestPointer, Manifest};

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
    pub op: Op,
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

/// Applies (or with `dry_run` checks) one committed run's corrections for one system.
pub async fn apply(job: &JobConfig, opts: &ApplyOptions) -> Result<ApplySummary> {
    // The command line checked these already (ApplyConfig); a library caller gets the
    // same checks and messages.
    job.check_system(&opts.system)?;
    job.check_entities(&opts.entities)?;
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
    match &exporter.kind {
        ExporterKind::Postgres { .. } => {
            let db = postgres::Pg::connect(&opts.system, &url).await?;
            apply_with(db, job, opts, &output, &manifest, &targets).await
        }
        _ => {
            let db = mysql::My::connect(&opts.system, &url).await?;
            apply_with(db, job, opts, &output, &manifest, &targets).await
        }
    }
}

/// The apply proper, once connected: every column checked, then the corrections
/// applied (or checked) and the report written.
async fn apply_with<D: Dialect>(
    mut db: D,
    job: &JobConfig,
    opts: &ApplyOptions,
    output: &store::Location,
    manifest: &Manifest,
    targets: &[Target],
) -> Result<ApplySummary> {
    // Every column apply names must be in its table, checked before anything is
    // written: a guard on a column the table lacks would fail row by row.
    for target in targets {
        let columns = db.columns(&target.table).await?;
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
        db.ensure_ledger().await?;
    }
    let ctx = Ctx {
        job: &job.name,
        run_id: &manifest.run_id,
    };
    let log = batch::apply_targets(&mut db, &ctx, opts, targets, &mut summary).await?;
    if !opts.dry_run {
        let rel = format!(
            "applies/run_date={}/run_id={}/system={}/apply-{apply_id}.parquet",
            manifest.run_date, manifest.run_id, opts.system
        );
        report::write_report(output, &rel, &summary, &log).await?;
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

/// The run a batch's ledger rows name.
pub(crate) struct Ctx<'a> {
    pub job: &'a str,
    pub run_id: &'a str,
}

/// One correction's outcome, for the report.
pub(crate) struct LogEntry {
    pub entity: String,
    pub correction_id: String,
    pub op: Op,
    pub outcome: Outcome,
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
                .find(|c| c.op != Op::Insert && !c.expected.iter().any(|(col, _)| col == v))
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

/// Ids of corrections already seen, for the batch being applied.
pub(crate) type Seen = HashSet<String>;
