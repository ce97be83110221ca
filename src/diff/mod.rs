//! The diff stage: runs one entity's plan in DataFusion and turns the differing rows it
//! streams into discrepancy rows and typed correction rows.
//!
//! Its rooms, in the order a run meets them: [`session`] sets up DataFusion and plans
//! each query; [`plan`] checks an entity against both snapshots and fixes the types
//! ([`types`]) each pair of columns is compared in, and [`sql`] renders its queries from
//! `queries/*.sql`; [`key_plan`] chooses how the two sides are matched by key (the
//! [`merge`], a join or an aggregation); this module runs the data-quality queries, the
//! key summary and the diff; [`classify`] turns the diff's rows into
//! [`discrepancies`] and [`corrections`], whose column names [`columns`] owns. The
//! comparison rules ([`compare`]), fingerprints ([`fingerprint`]) and exact casts
//! ([`fit`]) are DataFusion functions the queries call.

mod budget;
mod classify;
mod columns;
pub mod compare;
mod corrections;
mod discrepancies;
pub mod fingerprint;
pub mod fit;
mod key_plan;
pub mod merge;
pub mod plan;
pub mod progress;
mod session;
mod sql;
pub mod types;
pub mod udf;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use arrow::datatypes::{Field, Schema};
use chrono::NaiveDate;
use datafusion::datasource::MemTable;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::snapshot::Snapshot;
use crate::write::events::{Events, Reappeared};
use crate::write::vocabulary::{Action, Kind, Op};
use crate::write::{ManifestFile, RunLayout};
use classify::Classifier;
use columns::{DiffColumns, column};
use key_plan::{Carried, MERGE_PLAN, PAIRS_TABLE, key_summary, merge_plan, merge_stopped};
use plan::{EntityPlan, KeyPlan, Side};
use session::{Tuning, executed, physical_plan};

pub use corrections::correction_schema;
pub use key_plan::key_merge;
pub use session::{SessionOptions, session_context};

/// Identity of one run, stamped on every output row.
#[derive(Debug, Clone)]
pub struct RunStamp {
    pub job: String,
    pub run_id: String,
    pub run_date: NaiveDate,
    pub source: String,
    pub replica: String,
}

/// Counts for one discrepancy kind and field.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Count {
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub count: u64,
}

/// What one entity's diff produced.
#[derive(Debug)]
pub struct EntityResult {
    pub counts: Vec<Count>,
    /// Discrepancy rows per action: corrected in one system, or reported only.
    pub actions: BTreeMap<Action, u64>,
    /// Corrections withheld because the corrected column cannot hold the value exactly,
    /// per field (source name).
    pub unrepresentable: BTreeMap<String, u64>,
    /// system → op → count
    pub corrections: BTreeMap<String, BTreeMap<Op, u64>>,
    pub discrepancy_file: ManifestFile,
    pub correction_files: Vec<ManifestFile>,
    /// The correction files' events, in the same order.
    pub event_files: Vec<ManifestFile>,
    /// Corrections an earlier apply applied that are back.
    pub reappeared: Vec<Reappeared>,
    /// Null keys, the key summary and duplicate keys.
    pub key_summary_ms: u64,
    /// The diff query and the classification of its rows.
    pub diff_ms: u64,
    /// How the sides were matched: `merge`, `join` or `aggregation` (see
    /// [`key_summary`]).
    pub key_summary_plan: &'static str,
}

impl EntityResult {
    pub fn correction_total(&self) -> u64 {
        self.corrections.values().flat_map(|m| m.values()).sum()
    }
}

/// Runs one entity: data-quality queries, then the diff, streaming outputs (the
/// discrepancies, the corrections and their events) to the run.
pub async fn run_entity(
    ctx: &SessionContext,
    plan: &EntityPlan,
    inputs: [&Snapshot; 2],
    stamp: &RunStamp,
    layout: &RunLayout,
    events: &Events,
    progress: Option<&progress::Progress>,
) -> Result<EntityResult> {
    match run_entity_queries(ctx, plan, inputs, stamp, layout, events, progress).await {
        // A value that does not fit the unit its column is compared in fails the cast;
        // name the columns that may hold it.
        Err(Error::Query { context, source })
            if !plan.widened_units().is_empty()
                && source.to_string().to_lowercase().contains("cast") =>
        {
            Err(Error::Values {
                entity: plan.entity.name.clone(),
                message: format!(
                    "{}: a value outside the finer unit's range cannot be compared; export the \
                     column in one unit, or ignore it ({context}: {source})",
                    plan.widened_units().join("; ")
                ),
            })
        }
        other => other,
    }
}

async fn run_entity_queries(
    ctx: &SessionContext,
    plan: &EntityPlan,
    inputs: [&Snapshot; 2],
    stamp: &RunStamp,
    layout: &RunLayout,
    events: &Events,
    progress: Option<&progress::Progress>,
) -> Result<EntityResult> {
    let entity = &plan.entity.name;
    for udf in plan.functions() {
        ctx.register_udf(udf);
    }
    let collect = |stage: &'static str, context: String, physical: Arc<dyn ExecutionPlan>| async move {
        let _watch = progress.map(|p| p.watch(stage, Arc::clone(&physical)));
        let schema = physical.schema();
        let batches = datafusion::physical_plan::collect(Arc::clone(&physical), ctx.task_ctx())
            .await
            .map_err(|e| Error::query(&context, e))?;
        executed(entity, stage, &context, &physical);
        Ok::<_, Error>((schema, batches, physical))
    };
    let query = |stage: &'static str, context: String, sql: String, tuning: Tuning| async move {
        let physical = physical_plan(ctx, &context, &sql, tuning).await?;
        collect(stage, context, physical).await
    };

    // Data quality first: keys with a NULL part (a scan of the key columns), then the
    // key summary, which also counts each side's rows per key.
    let started = Instant::now();
    let mut keyed = inputs.map(|s| s.rows);
    let mut null_keys = Vec::new();
    for (i, side) in [Side::Source, Side::Replica].into_iter().enumerate() {
        let table = side.as_str();
        let context = format!(
            "entity `{entity}`, {} query on the {table} snapshot",
            Kind::NullKey
        );
        let sql = plan.null_keys_sql(side, table);
        let (_, batches, _) = query("null keys", context, sql, Tuning::Full).await?;
        for batch in batches {
            keyed[i] = keyed[i].saturating_sub(sum_u64(&batch, DiffColumns::ROWS)?);
            null_keys.push((side, batch));
        }
    }
    // The outputs, with the null-key rows first; a merge that stops part way starts
    // them again.
    let classifier = || {
        let mut out = Classifier::try_new(plan, stamp, layout, events)?;
        for (side, batch) in &null_keys {
            out.quality(batch, Kind::NullKey, *side)?;
        }
        Ok::<_, Error>(out)
    };

    let merge = match plan.key_plan {
        KeyPlan::Auto | KeyPlan::Merge => merge_plan(ctx, plan, inputs, progress).await?,
        KeyPlan::Join | KeyPlan::Aggregation => None,
    };
    if let Some(merge) = merge {
        // The key summary and the diff in one pass: the diff query reads the merge's
        // pairs as they come, in key order, so nothing is held in between. No key
        // repeats in a merge, so there are no duplicate keys to report.
        let key_summary_ms = started.elapsed().as_millis() as u64;
        let started = Instant::now();
        let mut out = classifier()?;
        out.flush_discrepancies().await?;
        let context = format!("entity `{entity}`, diff query");
        ctx.deregister_table(PAIRS_TABLE)
            .map_err(|e| Error::query(&context, e))?;
        ctx.register_table(PAIRS_TABLE, Arc::new(merge::MergedPairs::new(merge)))
            .map_err(|e| Error::query(&context, e))?;
        let sql = plan.pairs_diff_sql(PAIRS_TABLE);
        let physical = physical_plan(ctx, &context, &sql, Tuning::Ordered).await?;
        match diff(ctx, plan, &context, physical, &mut out, progress).await {
            Ok(()) => {
                tracing::debug!(entity = %entity, "key summary by merge");
                let diff_ms = started.elapsed().as_millis() as u64;
                return out.finish(key_summary_ms, diff_ms, MERGE_PLAN).await;
            }
            // What was written is dropped with `out`: its files never appear.
            Err(e) => match merge_stopped(&e) {
                Some(why) => {
                    tracing::info!(entity = %entity, "{why}: key summary by join instead of merge")
                }
                None => return Err(e),
            },
        }
    }

    let mut out = classifier()?;
    let (schema, batches, carried) = key_summary(ctx, plan, keyed, &query).await?;
    let context = format!("entity `{entity}`, key summary query");
    let candidates: usize = batches.iter().map(|b| b.num_rows()).sum();
    // The summary holds only the keys that need a look: the rows that differ and the
    // rows that break uniqueness, a small share of the snapshots.
    let summary =
        MemTable::try_new(schema, vec![batches]).map_err(|e| Error::query(&context, e))?;
    ctx.deregister_table(SUMMARY_TABLE)
        .map_err(|e| Error::query(&context, e))?;
    ctx.register_table(SUMMARY_TABLE, Arc::new(summary))
        .map_err(|e| Error::query(&context, e))?;
    for side in [Side::Source, Side::Replica] {
        let table = side.as_str();
        let context = format!(
            "entity `{entity}`, {} query on the {table} snapshot",
            Kind::DuplicateKey
        );
        let sql = plan.duplicate_keys_sql(side, SUMMARY_TABLE);
        let (_, batches, _) = query("duplicate keys", context, sql, Tuning::Full).await?;
        for batch in &batches {
            out.quality(batch, Kind::DuplicateKey, side)?;
        }
    }
    out.flush_discrepancies().await?;
    let key_summary_ms = started.elapsed().as_millis() as u64;
    tracing::debug!(entity = %entity, candidates, key_summary_ms, "key summary");

    let started = Instant::now();
    let context = format!("entity `{entity}`, diff query");
    // The diff reads each side's rows for the few candidate keys only: from the pairs
    // when they carry them, else from the snapshot.
    let sql = match carried {
        Carried::Replica => plan.diff_sql(SUMMARY_TABLE, "source", "replica", Some(PAIRS_TABLE)),
        Carried::None => plan.diff_sql(SUMMARY_TABLE, "source", "replica", None),
    };
    let physical = physical_plan(ctx, &context, &sql, Tuning::LateScan).await?;
    diff(ctx, plan, &context, physical, &mut out, progress).await?;
    let diff_ms = started.elapsed().as_millis() as u64;
    out.finish(key_summary_ms, diff_ms, carried.plan()).await
}

/// Runs the diff query `physical` and writes what it gives to `out`. Batches are
/// classified on the blocking pool, one per core, and written in order.
async fn diff(
    ctx: &SessionContext,
    plan: &EntityPlan,
    context: &str,
    physical: Arc<dyn ExecutionPlan>,
    out: &mut Classifier<'_>,
    progress: Option<&progress::Progress>,
) -> Result<()> {
    let _watch = progress.map(|p| p.watch("diff", Arc::clone(&physical)));
    let stream = datafusion::physical_plan::execute_stream(Arc::clone(&physical), ctx.task_ctx())
        .map_err(|e| Error::query(context, e))?;
    let batches = {
        let context = context.to_string();
        stream.map(move |batch| batch.map_err(|e| Error::query(&context, e)))
    };
    let rules = Arc::clone(&out.rules);
    let aliases = plan.diff_aliases();
    let classified = crate::parallel::map_blocking(
        batches,
        crate::parallel::cores(),
        "classifying the diff",
        move |batch| rules.classify(&with_aliases(&batch, &aliases)?),
    );
    let mut classified = std::pin::pin!(classified);
    while let Some(batch) = classified.next().await {
        out.absorb(batch?).await?;
    }
    executed(&plan.entity.name, "diff", context, &physical);
    Ok(())
}

/// `batch`, a batch of the diff query, with the columns the query leaves out
/// ([`EntityPlan::diff_aliases`]) added back, each sharing its twin's array.
fn with_aliases(batch: &RecordBatch, aliases: &[(String, String)]) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns = batch.columns().to_vec();
    for (name, twin) in aliases {
        let i = schema
            .index_of(twin)
            .map_err(|_| Error::Internal(format!("diff query output has no column {twin}")))?;
        fields.push(schema.field(i).clone().with_name(name));
        columns.push(Arc::clone(batch.column(i)));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::bug("diff query output", e))
}

/// Sum of the Int64 column `name` of `batch`.
fn sum_u64(batch: &RecordBatch, name: &str) -> Result<u64> {
    let a = column(batch, name)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| Error::Internal(format!("column {name} is not Int64")))?;
    Ok(a.iter().flatten().map(|v| v as u64).sum())
}

/// The table holding the entity's key summary while it is diffed.
const SUMMARY_TABLE: &str = "__key_summary";
