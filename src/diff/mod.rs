//! The diff stage: runs one entity's plan in DataFusion and turns the differing rows it
//! streams into discrepancy rows and typed correction rows.

mod budget;
pub mod compare;
pub mod fingerprint;
pub mod fit;
pub mod merge;
pub mod plan;
pub mod progress;
pub mod udf;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Builder, Float64Builder, ListBuilder,
    RecordBatch, StringArray, StringBuilder, StructArray, UInt32Array,
};
use arrow::compute::kernels::zip::zip;
use arrow::compute::{cast, nullif, take};
use arrow::datatypes::{DataType, Field, Fields, Float64Type, Int64Type, Schema, SchemaRef};
use chrono::NaiveDate;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::job::{DeletePolicy, Owner};
use crate::snapshot::{Snapshot, StatsOrder};
use crate::write::encode::{KeyJson, canonical_text, correction_id, days_since_epoch};
use crate::write::events::{EventRenderer, Events, EventsSink, Reappeared, Rendered};
use crate::write::vocabulary::Op;
use crate::write::{FileEntry, ManifestFile, ParquetSink, RunLayout, discrepancy_schema};
use plan::{EntityPlan, KeyPlan, Side, SoftColumn, SoftMarker};

/// Discrepancy kinds.
pub const MISSING_IN_REPLICA: &str = "missing_in_replica";
pub const EXTRA_IN_REPLICA: &str = "extra_in_replica";
pub const FIELD_MISMATCH: &str = "field_mismatch";
pub const DUPLICATE_KEY: &str = "duplicate_key";
pub const NULL_KEY: &str = "null_key";

/// The reason of a discrepancy whose correction is withheld because the corrected
/// column cannot hold the value exactly (see [`fit`]).
pub const UNREPRESENTABLE: &str = "unrepresentable";

/// How a diff session is set up.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    pub target_partitions: usize,
    /// Memory the queries may hold before spilling to disk (bytes).
    pub memory_limit: usize,
    /// Let DataFusion collect the files' statistics (see [`Snapshot::may_hide_nan`]).
    pub file_statistics: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            target_partitions: 2,
            memory_limit: 1 << 30,
            file_statistics: false,
        }
    }
}

/// The session every recon query runs in, production and SQL logic tests alike.
///
/// DataFusion's own settings may be given as `DATAFUSION_*` environment variables (for
/// example `DATAFUSION_EXECUTION_BATCH_SIZE=16384`), for tuning; the settings below are
/// recon's and take precedence.
pub fn session_context(opts: &SessionOptions) -> Result<SessionContext> {
    let config = SessionConfig::from_env().map_err(|e| {
        let set: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| k.starts_with("DATAFUSION_"))
            .collect();
        Error::Usage(format!(
            "DataFusion settings from the environment ({}): {e}",
            set.join(", ")
        ))
    })?;
    let mut config = config
        .with_target_partitions(opts.target_partitions.max(1))
        .with_information_schema(true);
    // DataFusion replaces a column whose file statistics say min = max (and no NULL)
    // with that constant, and Parquet's statistics leave NaN out: a file holding NaN and
    // 1e20 would read as 1e20 twice. Statistics are collected only for snapshots where
    // that cannot happen (they make the key join faster).
    config.options_mut().execution.collect_statistics = opts.file_statistics;
    // Each sorting partition keeps this much back for merging its spill files; keep the
    // total well inside the limit.
    let per_partition = opts.memory_limit / (8 * opts.target_partitions.max(1));
    let spill = &mut config.options_mut().execution.sort_spill_reservation_bytes;
    *spill = (*spill).min(per_partition);
    // The diff joins the keys that differ (a small table) to each snapshot: held once
    // in memory, with the snapshot streaming past it in every partition, rather than
    // both sides repartitioned by key.
    let optimizer = &mut config.options_mut().optimizer;
    optimizer.hash_join_single_partition_threshold = opts.memory_limit / 8;
    optimizer.hash_join_single_partition_threshold_rows = 1 << 24;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(opts.memory_limit)))
        .build_arc()
        .map_err(|e| Error::Internal(format!("setting up the query runtime: {e}")))?;
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

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
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub count: u64,
}

/// What one entity's diff produced.
#[derive(Debug)]
pub struct EntityResult {
    pub counts: Vec<Count>,
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
        let context = format!("entity `{entity}`, {NULL_KEY} query on the {table} snapshot");
        let sql = plan.null_keys_sql(side, table);
        let (_, batches, _) = query("null keys", context, sql, Tuning::Full).await?;
        for batch in batches {
            keyed[i] = keyed[i].saturating_sub(sum_u64(&batch, "__rows")?);
            null_keys.push((side, batch));
        }
    }
    // The outputs, with the null-key rows first; a merge that stops part way starts
    // them again.
    let classifier = || {
        let mut out = Classifier::try_new(plan, stamp, layout, events)?;
        for (side, batch) in &null_keys {
            out.quality(batch, NULL_KEY, *side)?;
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
        let context = format!("entity `{entity}`, {DUPLICATE_KEY} query on the {table} snapshot");
        let sql = plan.duplicate_keys_sql(side, SUMMARY_TABLE);
        let (_, batches, _) = query("duplicate keys", context, sql, Tuning::Full).await?;
        for batch in &batches {
            out.quality(batch, DUPLICATE_KEY, side)?;
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

/// The `key_summary_plan` of an entity matched by the key merge.
const MERGE_PLAN: &str = "merge";

/// Why a streamed key merge stopped, when it stopped for a reason that sends the
/// entity to the join (see [`merge_stop`]).
fn merge_stopped(e: &Error) -> Option<String> {
    match e {
        Error::Query { source, .. } => merge_stop(source, "the key merge"),
        _ => None,
    }
}

/// Why `what`, a key merge, stopped, when it stopped for a reason that sends the
/// entity to the join: a key out of order or repeated, or the memory limit.
fn merge_stop(e: &DataFusionError, what: &str) -> Option<String> {
    if let Some(why) = merge::NotMergeable::find(e) {
        Some(why.to_string())
    } else if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) {
        Some(format!("{what} ran out of memory"))
    } else {
        None
    }
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
        .map_err(|e| Error::Internal(format!("diff query output: {e}")))
}

/// Which sides' rows the pairs table [`PAIRS_TABLE`] carries for the diff, after a key
/// summary by join or aggregation (a merge's pairs go to the diff as they come).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carried {
    /// There is no pairs table: the key summary was an aggregation.
    None,
    /// The replica's (the key join).
    Replica,
}

impl Carried {
    /// The name of the key summary's plan that leaves these pairs.
    fn plan(self) -> &'static str {
        match self {
            Carried::Replica => "join",
            Carried::None => "aggregation",
        }
    }
}

/// The key merge of one entity ([`merge::MergePairsExec`] over queries/key_side.sql),
/// planned and not yet run, when both snapshots are sorted by the key; `None` sends
/// the entity to [`key_summary`]'s join or aggregation.
///
/// When both snapshots are sorted by the key and no key repeats, the merge walks them
/// in key order, one pass over each and a few batches held, and its pairs carry both
/// sides' rows: the diff query reads them as they come ([`merge::MergedPairs`]), and
/// reads neither snapshot again. The order is checked first, and again as the merge
/// goes. The first check reads the row groups' key statistics from the footers
/// ([`Snapshot::key_order`]): a key range that overlaps the previous row group's rules
/// the merge out, and ranges that ascend on both sides let it go ahead, a disorder
/// within a row group then stopping it when it gets there (the outputs written so far
/// are dropped, and the entity goes to the join). When the statistics cannot tell (a
/// composite or text key, statistics missing), a merge of the key columns alone checks
/// the order ([`key_order`]).
async fn merge_plan(
    ctx: &SessionContext,
    plan: &EntityPlan,
    inputs: [&Snapshot; 2],
    progress: Option<&progress::Progress>,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let entity = &plan.entity.name;
    let sides = [Side::Source, Side::Replica];
    let stats: Vec<StatsOrder> = sides
        .iter()
        .zip(inputs)
        .map(|(side, input)| {
            let keys: Vec<&str> = plan.keys().iter().map(|k| k.name(*side)).collect();
            input.key_order(&keys)
        })
        .collect();
    tracing::debug!(entity = %entity, ?stats, "key order by the row-group statistics");
    let ordered = if let Some(i) = stats.iter().position(|s| *s == StatsOrder::Unordered) {
        let side = sides[i].as_str();
        tracing::info!(entity = %entity, "the {side} snapshot's row groups are not in key order: key summary by join instead of merge");
        false
    } else if stats.iter().all(|s| *s == StatsOrder::RowGroupsAscend) {
        true
    } else {
        // A merge that cannot be planned (keys of a type it cannot compare) leaves the
        // join.
        match key_merge(ctx, plan, "source", "replica", true).await {
            Ok(order) => key_order(entity, ctx, order, progress).await?,
            Err(e) => {
                tracing::info!(entity = %entity, "no key merge ({e}): key summary by join instead");
                false
            }
        }
    };
    if !ordered {
        return Ok(None);
    }
    match key_merge(ctx, plan, "source", "replica", false).await {
        Ok(merge) => Ok(Some(merge)),
        Err(e) => {
            tracing::info!(entity = %entity, "no key merge ({e}): key summary by join instead");
            Ok(None)
        }
    }
}

/// The key summary of one entity (see queries/keys.sql) when the key merge does not
/// apply, by the cheaper of two plans, and which sides' rows the table [`PAIRS_TABLE`]
/// then holds for the diff.
///
/// A hash join of the two sides' keys and fingerprints (queries/key_pairs.sql) holds
/// the source side in memory and never hashes a key twice on the same side, which
/// makes it several times faster than grouping both sides' rows by key; its pairs
/// carry the replica's rows, so the diff reads only the source snapshot again. It is
/// exact only when no key found on both sides is repeated, which holds for snapshots
/// keyed by a primary key and is checked: a join pairs every row of a repeated key
/// with every row of the other side, so its output row count, its one-sided rows and
/// the sides' row counts `keyed` (rows with a complete key) agree only when no such
/// key exists. When they disagree, when the source side would not fit in half the
/// memory limit, or when the join runs out of memory, the summary is the hash
/// aggregation of queries/keys.sql, which spills to disk.
async fn key_summary<Q, FQ>(
    ctx: &SessionContext,
    plan: &EntityPlan,
    keyed: [u64; 2],
    query: &Q,
) -> Result<(SchemaRef, Vec<RecordBatch>, Carried)>
where
    Q: Fn(&'static str, String, String, Tuning) -> FQ,
    FQ: std::future::Future<Output = Result<(SchemaRef, Vec<RecordBatch>, Arc<dyn ExecutionPlan>)>>,
{
    let entity = &plan.entity.name;
    let context = format!("entity `{entity}`, key summary query");
    let limit = match ctx.runtime_env().memory_pool.memory_limit() {
        datafusion::execution::memory_pool::MemoryLimit::Finite(n) => n as u64,
        _ => u64::MAX,
    };
    let held = keyed[0].saturating_mul(PAIR_BYTES_PER_ROW);
    if plan.key_plan == KeyPlan::Aggregation {
        tracing::debug!(entity = %entity, "key summary by aggregation, as asked");
    } else if held <= limit / 2 {
        let sql = plan.key_pairs_sql("source", "replica");
        // No key repeated on both sides: at most one pair per row of either side.
        let budget = keyed[0].saturating_add(keyed[1]);
        match query(
            "key summary",
            context.clone(),
            sql,
            Tuning::Pairs { budget },
        )
        .await
        {
            Ok((schema, pairs, physical)) => match pairs_are_exact(&pairs, &physical, keyed) {
                Ok(()) => {
                    let table = MemTable::try_new(schema, vec![pairs])
                        .map_err(|e| Error::query(&context, e))?;
                    ctx.deregister_table(PAIRS_TABLE)
                        .map_err(|e| Error::query(&context, e))?;
                    ctx.register_table(PAIRS_TABLE, Arc::new(table))
                        .map_err(|e| Error::query(&context, e))?;
                    let sql = plan.key_pairs_summary_sql(PAIRS_TABLE);
                    let (schema, batches, _) =
                        query("key summary", context, sql, Tuning::Full).await?;
                    return Ok((schema, batches, Carried::Replica));
                }
                Err(why) => {
                    tracing::info!(entity = %entity, "{why}: key summary by aggregation instead")
                }
            },
            Err(Error::Query { source, .. })
                if matches!(source.find_root(), DataFusionError::ResourcesExhausted(_)) =>
            {
                tracing::info!(entity = %entity, "the key join ran out of memory: key summary by aggregation instead")
            }
            Err(Error::Query { source, .. }) if budget::OverBudget::find(&source).is_some() => {
                let why = budget::OverBudget::find(&source).expect("found");
                tracing::info!(entity = %entity, "{why}: key summary by aggregation instead")
            }
            Err(e) => return Err(e),
        }
    } else {
        tracing::info!(
            entity = %entity,
            "key summary by aggregation: the key join would hold about {} MiB, more than \
             half the memory limit",
            held >> 20
        );
    }
    let sql = plan.keys_sql("source", "replica");
    let (schema, batches, _) = query("key summary", context, sql, Tuning::Full).await?;
    Ok((schema, batches, Carried::None))
}

/// Whether the key merge `order` of the two sides' key columns alone (see
/// [`key_merge`]) runs to its end: both snapshots are in strictly ascending key order.
///
/// The full merge checks the order too, but it diffs the pairs as it goes, and a side
/// whose first keys are far ahead of the other's (row groups written out of order,
/// say) makes every row of the other side a pair before the disorder shows: the whole
/// snapshot diffed and written, only to be dropped. The keys alone are a small share
/// of the snapshots, and this pass writes nothing.
async fn key_order(
    entity: &str,
    ctx: &SessionContext,
    order: Arc<dyn ExecutionPlan>,
    progress: Option<&progress::Progress>,
) -> Result<bool> {
    let context = format!("entity `{entity}`, key order query");
    let _watch = progress.map(|p| p.watch("key order", Arc::clone(&order)));
    let mut stream = datafusion::physical_plan::execute_stream(order, ctx.task_ctx())
        .map_err(|e| Error::query(&context, e))?;
    while let Some(batch) = stream.next().await {
        if let Err(e) = batch {
            return match merge_stop(&e, "the key order check") {
                Some(why) => {
                    tracing::info!(entity = %entity, "{why}: key summary by join instead of merge");
                    Ok(false)
                }
                None => Err(Error::query(&context, e)),
            };
        }
    }
    Ok(true)
}

/// The key merge of `plan` over the snapshot tables `source` and `replica`
/// ([`merge::MergePairsExec`]): each side's query (queries/key_side.sql) planned as
/// one partition, so that its rows come in file order. With `keys_only`, the sides are
/// their key columns alone, for [`key_order`].
pub async fn key_merge(
    ctx: &SessionContext,
    plan: &EntityPlan,
    source: &str,
    replica: &str,
    keys_only: bool,
) -> Result<Arc<dyn ExecutionPlan>> {
    let context = format!("entity `{}`, key summary query", plan.entity.name);
    let side = |side: Side, table: &str| {
        let sql = plan.key_side_sql(side, table, keys_only);
        let context = &context;
        async move { physical_plan(ctx, context, &sql, Tuning::Ordered).await }
    };
    let merge = merge::MergePairsExec::try_new(
        side(Side::Source, source).await?,
        side(Side::Replica, replica).await?,
        plan.key_len,
    )
    .map_err(|e| Error::query(&context, e))?;
    Ok(Arc::new(merge))
}

/// The table holding the key join's pairs (queries/key_pairs.sql) while the entity is
/// diffed.
const PAIRS_TABLE: &str = "__key_pairs";

/// Memory the key join holds per source row (key, fingerprint, hash table),
/// rounded up for wide keys.
const PAIR_BYTES_PER_ROW: u64 = 64;

/// Checks that the key join's pairs are exact: no key found on both sides repeated.
///
/// The join yields `max(s_k, 1) * max(r_k, 1)` rows for a key with `s_k` source and
/// `r_k` replica rows. Over the keys on both sides, the pairs number `Σ s_k r_k`, which
/// equals both `Σ s_k` and `Σ r_k` exactly when every `s_k` and `r_k` is 1. The
/// one-sided rows are all kept, so with `J` the join's output rows, `A` the source-only
/// and `B` the replica-only rows, the check is `J - B = source rows` and
/// `J - A = replica rows`.
fn pairs_are_exact(
    pairs: &[RecordBatch],
    physical: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    keyed: [u64; 2],
) -> std::result::Result<(), String> {
    let mut joins = Vec::new();
    find_joins(physical, &mut joins);
    let [joined] = joins[..] else {
        return Err(format!("the key join's plan has {} joins", joins.len()));
    };
    // Pair rows whose `other` side is absent.
    let one_sided = |other: &str| -> std::result::Result<u64, String> {
        let mut n = 0u64;
        for b in pairs {
            let Some(other) = column(b, other).as_primitive_opt::<Int64Type>() else {
                return Err("the key join's pairs have unexpected column types".into());
            };
            n += other.values().iter().filter(|v| **v == 0).count() as u64;
        }
        Ok(n)
    };
    let source_only = one_sided("__rr")?;
    let replica_only = one_sided("__sr")?;
    if joined.checked_sub(replica_only) == Some(keyed[0])
        && joined.checked_sub(source_only) == Some(keyed[1])
    {
        Ok(())
    } else {
        Err(format!(
            "a key on both sides is repeated ({joined} joined rows, {source_only} source-only, \
             {replica_only} replica-only, {} and {} rows)",
            keyed[0], keyed[1]
        ))
    }
}

/// Output rows of every join in `plan`.
fn find_joins(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>, out: &mut Vec<u64>) {
    for_each_operator(plan, &mut |op| {
        if op.name().contains("Join") {
            out.push(
                op.metrics()
                    .and_then(|m| m.output_rows())
                    .unwrap_or_default() as u64,
            );
        }
    });
}

/// Calls `f` on every operator of `plan`, parents before children.
fn for_each_operator(
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    f: &mut impl FnMut(&Arc<dyn datafusion::physical_plan::ExecutionPlan>),
) {
    f(plan);
    for child in plan.children() {
        for_each_operator(child, f);
    }
}

/// Sum of the Int64 column `name` of `batch`.
fn sum_u64(batch: &RecordBatch, name: &str) -> Result<u64> {
    let a = column(batch, name)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| Error::Internal(format!("column {name} is not Int64")))?;
    Ok(a.iter().flatten().map(|v| v as u64).sum())
}

/// How a query is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tuning {
    /// Every projected column of every row is decoded; the query reads most rows.
    Full,
    /// As `Full`, with every hash join holding its left side once (a single
    /// partition), for the key join of [`key_summary`], sized beforehand, and emitting
    /// at most `budget` rows ([`budget::RowBudgetExec`]).
    Pairs { budget: u64 },
    /// One partition, so that the rows come in the order they are stored: each side of
    /// the key merge, and the diff over its pairs.
    Ordered,
    /// Filters pushed into the scan, the join's dynamic filter of candidate keys among
    /// them, are applied while decoding: the key column is decoded first and the other
    /// columns only for the rows that pass. For a query that needs few of the rows.
    LateScan,
}

/// Plans one of the entity's queries; `context` names it in errors and the debug log.
async fn physical_plan(
    ctx: &SessionContext,
    context: &str,
    sql: &str,
    tuning: Tuning,
) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    tracing::debug!(sql = %sql, "{context}");
    let mut state = ctx.state();
    let options = state.config_mut().options_mut();
    // The two scans that read whole snapshots into a join run two partitions per
    // thread, so that a partition waiting on its file or finishing early leaves no core
    // idle: measured on the 20M benchmark pair with 2 cores, the key summary 3.64 ->
    // 3.39 s and the diff 2.73 -> 2.55 s (medians of 5). The aggregation (`Full`)
    // keeps one per thread; it was slower with two (100M rows at 4GiB: 67.9 -> 73.6 s).
    if tuning != Tuning::Full {
        options.execution.target_partitions *= 2;
    }
    match tuning {
        Tuning::Full => {}
        Tuning::Ordered => options.execution.target_partitions = 1,
        Tuning::Pairs { .. } => {
            options.optimizer.hash_join_single_partition_threshold = usize::MAX;
            options.optimizer.hash_join_single_partition_threshold_rows = usize::MAX;
            // The source is held, as sized beforehand; the replica, whose columns the
            // pairs carry, streams past it.
            options.optimizer.join_reordering = false;
        }
        Tuning::LateScan => options.execution.parquet.pushdown_filters = true,
    }
    let logical = state
        .create_logical_plan(sql)
        .await
        .map_err(|e| Error::query(context, e))?;
    let physical = state
        .create_physical_plan(&logical)
        .await
        .map_err(|e| Error::query(context, e))?;
    match tuning {
        Tuning::Pairs { budget } => {
            budget::RowBudgetExec::on_joins(physical, budget).map_err(|e| Error::query(context, e))
        }
        _ => Ok(physical),
    }
}

/// Reports on a query that ran: what it spilled (info) and, at trace level, its plan
/// with every operator's metrics (rows, time, memory), for tuning.
fn executed(
    entity: &str,
    stage: &str,
    context: &str,
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
) {
    let spilled = spilled_bytes(plan);
    if spilled > 0 {
        tracing::info!(entity = %entity, stage, spilled_bytes = spilled, "spilled to disk under the memory limit");
    }
    if tracing::enabled!(tracing::Level::TRACE) {
        let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
            plan.as_ref(),
        )
        .indent(true);
        tracing::trace!("{context}, executed plan with metrics:\n{shown}");
    }
}

/// Bytes the operators of `plan` wrote to spill files.
fn spilled_bytes(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> usize {
    let mut spilled = 0;
    for_each_operator(plan, &mut |op| {
        spilled += op
            .metrics()
            .and_then(|m| m.spilled_bytes())
            .unwrap_or_default();
    });
    spilled
}

/// The table holding the entity's key summary while it is diffed.
const SUMMARY_TABLE: &str = "__key_summary";

/// A correction to be emitted for one row of a diff batch.
struct PendingCorrection {
    row: u32,
    op: Op,
    id: String,
    /// Indices into `plan.mapped` of the columns set (updates).
    changed: Vec<usize>,
}

/// One system's correction file for the entity and its events file, opened at its
/// first correction.
#[derive(Default)]
struct CorrectionSink {
    sink: Option<(ParquetSink, EventsSink)>,
    counts: BTreeMap<Op, u64>,
    reappeared: Vec<Reappeared>,
}

/// What classifying a diff batch needs, owned, so that batches are classified on the
/// blocking pool, one per core.
struct Rules {
    plan: EntityPlan,
    stamp: RunStamp,
    /// Value a soft delete sets in the replica's soft-delete column.
    soft_deleted: Option<ScalarValue>,
    /// Per correction slot (the replica's corrections first): the side corrected, its
    /// system and its correction file's schema.
    slots: [(Side, String, SchemaRef); 2],
    /// Per correction slot: the events of its corrections.
    events: [EventRenderer; 2],
}

/// How many discrepancies of each kind one diff batch has.
struct Tally {
    missing: u64,
    extra: u64,
    /// Field mismatches per compared field (index into `plan.fields`).
    mismatches: Vec<u64>,
    /// Corrections withheld because the corrected column cannot hold the value, per
    /// mapped column (index into `plan.mapped`).
    unrepresentable: Vec<u64>,
}

/// The outputs of one diff batch.
struct Classified {
    discrepancies: RecordBatch,
    tally: Tally,
    /// Per correction slot, when the batch has corrections for it.
    corrections: [Option<SlotCorrections>; 2],
}

/// One correction slot's share of a diff batch.
struct SlotCorrections {
    /// The correction rows, as the correction file holds them.
    rows: RecordBatch,
    /// How many of each op.
    ops: BTreeMap<Op, u64>,
    events: Rendered,
}

/// Builds discrepancy and correction rows for one entity and streams them out.
struct Classifier<'a> {
    plan: &'a EntityPlan,
    stamp: &'a RunStamp,
    layout: &'a RunLayout,
    events: &'a Events,
    discrepancies: ParquetSink,
    /// Data-quality rows not yet written.
    rows: DiscrepancyRows,
    counts: BTreeMap<(String, Option<String>), u64>,
    /// Corrections withheld as unrepresentable, per field (source name).
    unrepresentable: BTreeMap<String, u64>,
    corrections: [CorrectionSink; 2],
    rules: Arc<Rules>,
}

impl<'a> Classifier<'a> {
    fn try_new(
        plan: &'a EntityPlan,
        stamp: &'a RunStamp,
        layout: &'a RunLayout,
        events: &'a Events,
    ) -> Result<Self> {
        let entity = &plan.entity.name;
        let discrepancies =
            ParquetSink::discrepancies(layout, layout.discrepancies(entity), discrepancy_schema())?;
        let soft_deleted = match &plan.replica_soft {
            Some(s) => Some(soft_value(s, stamp.run_date, true)?),
            None => None,
        };
        let slot =
            |side: Side, system: &str| (side, system.to_string(), correction_schema(plan, side));
        let rules = Rules {
            plan: plan.clone(),
            stamp: stamp.clone(),
            soft_deleted,
            slots: [
                slot(Side::Replica, &stamp.replica),
                slot(Side::Source, &stamp.source),
            ],
            events: [&stamp.replica, &stamp.source]
                .map(|system| events.renderer(system, &plan.entity.name)),
        };
        Ok(Classifier {
            plan,
            stamp,
            layout,
            events,
            discrepancies,
            rows: DiscrepancyRows::default(),
            counts: BTreeMap::new(),
            unrepresentable: BTreeMap::new(),
            corrections: Default::default(),
            rules: Arc::new(rules),
        })
    }

    fn count(&mut self, kind: &str, field: Option<&str>, n: u64) {
        if n > 0 {
            *self
                .counts
                .entry((kind.to_string(), field.map(str::to_string)))
                .or_default() += n;
        }
    }

    /// Rows of a null-key or duplicate-key query: raw key columns, then `__rows`.
    fn quality(&mut self, batch: &RecordBatch, kind: &str, side: Side) -> Result<()> {
        let keys = key_json(self.plan, (0..self.plan.key_len).map(|i| batch.column(i)))?;
        let n = batch
            .column(self.plan.key_len)
            .as_primitive::<Int64Type>()
            .clone();
        let reason = match side {
            Side::Source => "in_source",
            Side::Replica => "in_replica",
        };
        for row in 0..batch.num_rows() {
            let key = keys.json(row);
            let count = n.value(row).to_string();
            let (sv, rv) = match side {
                Side::Source => (Some(count.as_str()), None),
                Side::Replica => (None, Some(count.as_str())),
            };
            self.rows.push(
                self.stamp,
                &self.plan.entity.name,
                &key,
                kind,
                None,
                sv,
                rv,
                None,
                "report_only",
                Some(reason),
                None,
                None,
            );
        }
        self.count(kind, None, batch.num_rows() as u64);
        Ok(())
    }

    /// Writes out what a diff batch gave.
    async fn absorb(&mut self, c: Classified) -> Result<()> {
        if c.discrepancies.num_rows() > 0 {
            self.discrepancies.write(&c.discrepancies).await?;
        }
        self.count(MISSING_IN_REPLICA, None, c.tally.missing);
        self.count(EXTRA_IN_REPLICA, None, c.tally.extra);
        let plan = self.plan;
        for (f, n) in plan.fields.iter().zip(c.tally.mismatches) {
            self.count(FIELD_MISMATCH, Some(&plan.field_column(f).source), n);
        }
        for (m, n) in plan.mapped.iter().zip(c.tally.unrepresentable) {
            if n > 0 {
                *self.unrepresentable.entry(m.source.clone()).or_default() += n;
            }
        }
        for (slot, out) in c.corrections.into_iter().enumerate() {
            let Some(SlotCorrections {
                rows: batch,
                ops,
                events,
            }) = out
            else {
                continue;
            };
            let (_, system, schema) = &self.rules.slots[slot];
            let c = &mut self.corrections[slot];
            for (op, n) in ops {
                *c.counts.entry(op).or_default() += n;
            }
            c.reappeared.extend(events.reappeared);
            if c.sink.is_none() {
                let entity = &plan.entity.name;
                c.sink = Some((
                    ParquetSink::corrections(
                        self.layout,
                        self.layout.corrections(system, entity),
                        Arc::clone(schema),
                    )?,
                    self.events.sink(system, entity),
                ));
            }
            let (corrections, event_sink) = c.sink.as_mut().expect("just set");
            corrections.write(&batch).await?;
            event_sink.write(events.body, events.events).await?;
        }
        Ok(())
    }

    async fn flush_discrepancies(&mut self) -> Result<()> {
        if self.rows.len() > 0 {
            let batch = self.rows.finish()?;
            self.discrepancies.write(&batch).await?;
        }
        Ok(())
    }

    async fn finish(
        mut self,
        key_summary_ms: u64,
        diff_ms: u64,
        key_summary_plan: &'static str,
    ) -> Result<EntityResult> {
        self.flush_discrepancies().await?;
        let entity = self.plan.entity.name.clone();
        let discrepancy_file = self
            .discrepancies
            .finish(FileEntry {
                kind: "discrepancies",
                entity: Some(entity.clone()),
                system: None,
            })
            .await?;
        let mut correction_files = Vec::new();
        let mut event_files = Vec::new();
        let mut reappeared = Vec::new();
        let mut corrections = BTreeMap::new();
        for (c, (_, system, _)) in self.corrections.into_iter().zip(&self.rules.slots) {
            if let Some((sink, events)) = c.sink {
                correction_files.push(
                    sink.finish(FileEntry {
                        kind: "corrections",
                        entity: Some(entity.clone()),
                        system: Some(system.clone()),
                    })
                    .await?,
                );
                event_files.push(events.finish().await?);
            }
            reappeared.extend(c.reappeared);
            if !c.counts.is_empty() {
                corrections.insert(system.clone(), c.counts);
            }
        }
        let mut counts: Vec<Count> = self
            .counts
            .into_iter()
            .map(|((kind, field), count)| Count { kind, field, count })
            .collect();
        counts.sort();
        Ok(EntityResult {
            counts,
            unrepresentable: self.unrepresentable,
            corrections,
            discrepancy_file,
            correction_files,
            event_files,
            reappeared,
            key_summary_ms,
            diff_ms,
            key_summary_plan,
        })
    }
}

impl Rules {
    /// The discrepancy and correction rows of one batch of the diff query.
    fn classify(&self, batch: &RecordBatch) -> Result<Classified> {
        let plan = &self.plan;
        let entity = plan.entity.name.as_str();
        let class = batch
            .column_by_name("__class")
            .expect("diff has __class")
            .as_string::<i32>()
            .clone();
        let keys = key_json(
            plan,
            (0..plan.key_len).map(|i| column(batch, &format!("k{i}"))),
        )?;
        let fields: Vec<FieldColumns> = plan
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| FieldColumns::new(batch, i, f.newest.is_some(), &f.common))
            .collect::<Result<_>>()?;
        let insert_columns: Vec<usize> = (plan.key_len..plan.mapped.len()).collect();
        let delete = match plan.entity.deletes {
            DeletePolicy::Hard => Some(Op::Delete),
            DeletePolicy::Soft { .. } => Some(Op::SoftDelete),
            DeletePolicy::Report => None,
        };
        let mut out = Batch {
            rules: self,
            rows: DiscrepancyRows::default(),
            pending: [Vec::new(), Vec::new()],
            tally: Tally {
                missing: 0,
                extra: 0,
                mismatches: vec![0; plan.fields.len()],
                unrepresentable: vec![0; plan.mapped.len()],
            },
            fits: [Side::Replica, Side::Source].map(|to| Fits::new(plan, batch, to)),
        };
        let replica = self.stamp.replica.as_str();
        for row in 0..batch.num_rows() {
            let key = keys.json(row);
            let r = row as u32;
            match class.value(row) {
                "missing_in_replica" => {
                    out.tally.missing += 1;
                    // An insert sets every column: withheld when one cannot hold its value.
                    if let Some(j) = out.fits[0].first_lost(row, 0..plan.mapped.len()) {
                        out.tally.unrepresentable[j] += 1;
                        let field = plan.mapped[j].source.as_str();
                        out.push_row(
                            &key,
                            MISSING_IN_REPLICA,
                            "report_only",
                            None,
                            Some(field),
                            Some(UNREPRESENTABLE),
                        );
                        continue;
                    }
                    let id = correction_id(&self.stamp.job, entity, replica, Op::Insert, &key, &[]);
                    out.push_row(
                        &key,
                        MISSING_IN_REPLICA,
                        "correct_replica",
                        Some(&id),
                        None,
                        None,
                    );
                    out.pending[0].push(PendingCorrection {
                        row: r,
                        op: Op::Insert,
                        id,
                        changed: insert_columns.clone(),
                    });
                }
                "extra_in_replica" => {
                    let id = delete
                        .map(|op| correction_id(&self.stamp.job, entity, replica, op, &key, &[]));
                    let action = if delete.is_some() {
                        "correct_replica"
                    } else {
                        "report_only"
                    };
                    out.push_row(&key, EXTRA_IN_REPLICA, action, id.as_deref(), None, None);
                    out.tally.extra += 1;
                    if let (Some(op), Some(id)) = (delete, id) {
                        out.pending[0].push(PendingCorrection {
                            row: r,
                            op,
                            id,
                            changed: vec![],
                        });
                    }
                }
                _ => out.mismatches(row, &key, &fields),
            }
        }
        let mut corrections = [None, None];
        for (slot, pending) in out.pending.iter().enumerate() {
            if pending.is_empty() {
                continue;
            }
            let (side, _, schema) = &self.slots[slot];
            let rows = build_corrections(
                plan,
                *side,
                schema,
                batch,
                pending,
                self.soft_deleted.as_ref(),
                self.stamp.run_date,
            )?;
            let mut ops = BTreeMap::new();
            for p in pending {
                *ops.entry(p.op).or_default() += 1;
            }
            let events = self.events[slot].render(&rows)?;
            corrections[slot] = Some(SlotCorrections { rows, ops, events });
        }
        Ok(Classified {
            discrepancies: out.rows.finish()?,
            tally: out.tally,
            corrections,
        })
    }
}

/// One diff batch's outputs as they are gathered.
struct Batch<'r> {
    rules: &'r Rules,
    rows: DiscrepancyRows,
    /// Per correction slot.
    pending: [Vec<PendingCorrection>; 2],
    tally: Tally,
    /// Per correction slot: where its values to set do not fit.
    fits: [Fits; 2],
}

/// Where the values to set on one side are lost: NULL after the exact cast
/// ([`fit::ExactCast`]) while the value they come from is not.
struct Fits {
    /// Per mapped column that needs the exact cast: (index, values to set, values
    /// they come from).
    columns: Vec<(usize, ArrayRef, ArrayRef)>,
}

impl Fits {
    fn new(plan: &EntityPlan, batch: &RecordBatch, to: Side) -> Self {
        let (set, from) = match to {
            Side::Replica => ("rset", "scur"),
            Side::Source => ("sset", "rcur"),
        };
        let columns = (0..plan.mapped.len())
            .filter(|&j| plan.needs_fit(to, j))
            .map(|j| {
                (
                    j,
                    Arc::clone(column(batch, &format!("{set}{j}"))),
                    Arc::clone(column(batch, &format!("{from}{j}"))),
                )
            })
            .collect();
        Fits { columns }
    }

    /// Whether mapped column `j`'s value to set in `row` is lost.
    fn lost(&self, row: usize, j: usize) -> bool {
        self.columns
            .iter()
            .any(|(c, set, from)| *c == j && set.is_null(row) && from.is_valid(row))
    }

    /// The first of `columns` whose value to set in `row` is lost.
    fn first_lost(&self, row: usize, columns: std::ops::Range<usize>) -> Option<usize> {
        columns.into_iter().find(|&j| self.lost(row, j))
    }
}

impl Batch<'_> {
    /// A discrepancy row for a key on one side only; `field` and `reason` only when its
    /// correction is withheld (the column that cannot hold its value).
    fn push_row(
        &mut self,
        key: &str,
        kind: &str,
        action: &str,
        id: Option<&str>,
        field: Option<&str>,
        reason: Option<&str>,
    ) {
        let stamp = &self.rules.stamp;
        let entity = &self.rules.plan.entity.name;
        self.rows.push(
            stamp,
            entity,
            key,
            kind,
            field,
            None,
            None,
            Some("source"),
            action,
            reason,
            None,
            id,
        );
    }

    /// Field mismatches of one row present on both sides.
    fn mismatches(&mut self, row: usize, key: &str, fields: &[FieldColumns]) {
        let rules = self.rules;
        let plan = &rules.plan;
        let entity = plan.entity.name.as_str();
        // (field index, corrected side) of each differing field
        let mut differing: Vec<(usize, Option<Side>)> = Vec::new();
        for (i, f) in plan.fields.iter().enumerate() {
            if fields[i].reason.is_null(row) {
                continue;
            }
            let corrected = match &f.rule.owner {
                Owner::Source => Some(Side::Replica),
                Owner::Replica => Some(Side::Source),
                Owner::None => None,
                Owner::Newest { .. } => {
                    let newer = fields[i]
                        .replica_newer
                        .as_ref()
                        .is_some_and(|a| a.is_valid(row) && a.value(row));
                    Some(if newer { Side::Source } else { Side::Replica })
                }
            };
            differing.push((i, corrected));
        }
        // Fields whose value the corrected side cannot hold: reported, never corrected.
        let lost: Vec<bool> = differing
            .iter()
            .map(|(i, s)| match s {
                Some(Side::Replica) => self.fits[0].lost(row, plan.fields[*i].column),
                Some(Side::Source) => self.fits[1].lost(row, plan.fields[*i].column),
                None => false,
            })
            .collect();
        let mut ids: [Option<String>; 2] = [None, None];
        for (slot, (side, system, _)) in rules.slots.iter().enumerate() {
            let changed: Vec<(usize, &str, Option<&str>, Option<&str>)> = differing
                .iter()
                .zip(&lost)
                .filter(|((_, s), lost)| *s == Some(*side) && !**lost)
                .map(|(d, _)| d)
                .map(|(i, _)| {
                    let m = plan.field_column(&plan.fields[*i]);
                    (
                        *i,
                        m.name(*side),
                        fields[*i].source_text(row),
                        fields[*i].replica_text(row),
                    )
                })
                .collect();
            if changed.is_empty() {
                continue;
            }
            let detail: Vec<(&str, Option<&str>, Option<&str>)> =
                changed.iter().map(|(_, n, s, r)| (*n, *s, *r)).collect();
            let id = correction_id(&rules.stamp.job, entity, system, Op::Update, key, &detail);
            self.pending[slot].push(PendingCorrection {
                row: row as u32,
                op: Op::Update,
                id: id.clone(),
                changed: changed
                    .iter()
                    .map(|(i, ..)| plan.fields[*i].column)
                    .collect(),
            });
            ids[slot] = Some(id);
        }
        for ((i, corrected), lost) in differing.into_iter().zip(lost) {
            let f = &plan.fields[i];
            let name = plan.field_column(f).source.as_str();
            let fc = &fields[i];
            let (action, id, reason) = match corrected {
                _ if lost => {
                    self.tally.unrepresentable[f.column] += 1;
                    ("report_only", None, UNREPRESENTABLE)
                }
                Some(Side::Replica) => ("correct_replica", ids[0].as_deref(), fc.reason.value(row)),
                Some(Side::Source) => ("correct_source", ids[1].as_deref(), fc.reason.value(row)),
                None => ("report_only", None, fc.reason.value(row)),
            };
            self.rows.push(
                &rules.stamp,
                entity,
                key,
                FIELD_MISMATCH,
                Some(name),
                fc.source_text(row),
                fc.replica_text(row),
                Some(f.rule.owner.as_str()),
                action,
                Some(reason),
                fc.delta(row),
                id,
            );
            self.tally.mismatches[i] += 1;
        }
    }
}
/// The key columns of a batch (`arrays`, in the plan's key order) as canonical JSON.
fn key_json<'b>(plan: &EntityPlan, arrays: impl Iterator<Item = &'b ArrayRef>) -> Result<KeyJson> {
    KeyJson::new(plan.keys().iter().map(|k| k.source.as_str()).zip(arrays))
}

fn column<'b>(batch: &'b RecordBatch, name: &str) -> &'b ArrayRef {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("diff query output has no column {name}"))
}

/// The schema of one system's correction files: id, op, changed fields, the entity's
/// mapped columns in that system's names and types (values to set), and `expected`, a
/// struct of the same columns holding the values the row had in the snapshot.
pub fn correction_schema(plan: &EntityPlan, side: Side) -> SchemaRef {
    let mut payload: Vec<Field> = plan
        .mapped
        .iter()
        .map(|m| Field::new(m.name(side), m.data_type(side).clone(), true))
        .collect();
    if let (Side::Replica, Some(soft)) = (side, plan.extra_soft()) {
        payload.push(Field::new(&soft.name, soft.data_type(), true));
    }
    let mut fields = vec![
        Field::new("correction_id", DataType::Utf8, false),
        Field::new("op", DataType::Utf8, false),
        Field::new(
            "changed_fields",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
    ];
    fields.extend(payload.iter().cloned());
    fields.push(Field::new(
        "expected",
        DataType::Struct(Fields::from(payload)),
        true,
    ));
    Arc::new(Schema::new(fields))
}

/// The value a soft-deleted (or, with `deleted = false`, a live) row has in `s`.
/// Deterministic: a timestamp column gets midnight UTC of the run date.
fn soft_value(s: &SoftColumn, run_date: NaiveDate, deleted: bool) -> Result<ScalarValue> {
    let t = s.data_type();
    let value = match (&s.marker, deleted) {
        (SoftMarker::Bool(v), true) => ScalarValue::Boolean(Some(*v)),
        (SoftMarker::Bool(v), false) => ScalarValue::Boolean(Some(!*v)),
        (SoftMarker::NotNull(_), false) => {
            return ScalarValue::try_from(&t).map_err(|e| Error::Internal(e.to_string()));
        }
        (SoftMarker::NotNull(_), true) => {
            let midnight = run_date
                .and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp();
            // Midnight UTC in the column's own zone, so that the cast keeps the instant.
            let zone = match plan::value_type(&t) {
                DataType::Timestamp(_, zone) => zone.clone(),
                _ => None,
            };
            let seconds = ScalarValue::TimestampSecond(Some(midnight), zone);
            seconds
                .cast_to(&t)
                .map_err(|e| Error::Internal(format!("soft-delete value for `{}`: {e}", s.name)))?
        }
    };
    Ok(value)
}

fn build_corrections(
    plan: &EntityPlan,
    side: Side,
    schema: &SchemaRef,
    batch: &RecordBatch,
    pending: &[PendingCorrection],
    soft_deleted: Option<&ScalarValue>,
    run_date: NaiveDate,
) -> Result<RecordBatch> {
    let prefix = match side {
        Side::Replica => "r",
        Side::Source => "s",
    };
    let indices = UInt32Array::from_iter_values(pending.iter().map(|p| p.row));
    let internal = |e: arrow::error::ArrowError| {
        Error::Internal(format!(
            "building corrections of `{}`: {e}",
            plan.entity.name
        ))
    };
    let soft_rows = BooleanArray::from_iter(pending.iter().map(|p| Some(p.op == Op::SoftDelete)));
    let soft_name = plan
        .replica_soft
        .as_ref()
        .filter(|_| side == Side::Replica)
        .map(|s| s.name.as_str());

    let mut values: Vec<ArrayRef> = Vec::with_capacity(plan.mapped.len() + 1);
    let mut expected: Vec<ArrayRef> = Vec::with_capacity(plan.mapped.len() + 1);
    for (j, m) in plan.mapped.iter().enumerate() {
        let set = take(
            column(batch, &format!("{prefix}set{j}")).as_ref(),
            &indices,
            None,
        )
        .map_err(internal)?;
        let cur = take(
            column(batch, &format!("{prefix}cur{j}")).as_ref(),
            &indices,
            None,
        )
        .map_err(internal)?;
        let drop = BooleanArray::from_iter(pending.iter().map(|p| {
            let keep =
                m.is_key || p.op == Op::Insert || (p.op == Op::Update && p.changed.contains(&j));
            Some(!keep)
        }));
        let mut value = nullif(set.as_ref(), &drop).map_err(internal)?;
        if soft_name == Some(m.name(side))
            && let Some(v) = soft_deleted
        {
            let marker = v.to_scalar().map_err(|e| Error::Internal(e.to_string()))?;
            value = zip(&soft_rows, &marker, &value).map_err(internal)?;
        }
        values.push(value);
        expected.push(cur);
    }
    if let (Side::Replica, Some(soft)) = (side, plan.extra_soft()) {
        let deleted = soft_value(soft, run_date, true)?;
        let live = soft_value(soft, run_date, false)?;
        let none =
            ScalarValue::try_from(&soft.data_type()).map_err(|e| Error::Internal(e.to_string()))?;
        let scalars: Vec<ScalarValue> = pending
            .iter()
            .map(|p| match p.op {
                Op::SoftDelete => deleted.clone(),
                Op::Insert => live.clone(),
                _ => none.clone(),
            })
            .collect();
        let array =
            ScalarValue::iter_to_array(scalars).map_err(|e| Error::Internal(e.to_string()))?;
        values.push(array);
        let j = plan.mapped.len();
        let cur =
            take(column(batch, &format!("rcur{j}")).as_ref(), &indices, None).map_err(internal)?;
        expected.push(cur);
    }

    let payload_fields: Fields = match schema
        .field_with_name("expected")
        .expect("expected")
        .data_type()
    {
        DataType::Struct(f) => f.clone(),
        _ => unreachable!("expected is a struct"),
    };
    let not_insert = arrow::buffer::NullBuffer::from(
        pending
            .iter()
            .map(|p| p.op != Op::Insert)
            .collect::<Vec<_>>(),
    );
    let expected =
        StructArray::try_new(payload_fields, expected, Some(not_insert)).map_err(internal)?;

    let ids = StringArray::from_iter_values(pending.iter().map(|p| p.id.as_str()));
    let ops = StringArray::from_iter_values(pending.iter().map(|p| p.op.as_str()));
    let mut changed = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
        "item",
        DataType::Utf8,
        true,
    )));
    for p in pending {
        match p.op {
            Op::SoftDelete => {
                if let Some(s) = &plan.replica_soft {
                    changed.values().append_value(&s.name);
                }
            }
            op => {
                for j in &p.changed {
                    changed.values().append_value(plan.mapped[*j].name(side));
                }
                // An insert also sets the replica's own soft-delete column, to live.
                if let (Op::Insert, Side::Replica, Some(soft)) = (op, side, plan.extra_soft()) {
                    changed.values().append_value(&soft.name);
                }
            }
        }
        changed.append(true);
    }
    let changed = changed.finish();

    let mut columns: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(ops), Arc::new(changed)];
    columns.extend(values);
    columns.push(Arc::new(expected));
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(internal)
}

/// The diff output columns of one compared field.
struct FieldColumns {
    reason: StringArray,
    /// Row → index into the texts, for the rows where the field differs (a reason);
    /// `u32::MAX` elsewhere.
    at: Vec<u32>,
    /// The values as text, of the rows where the field differs only: rendering every
    /// row's would cost more than the rest of the classification.
    source_text: StringArray,
    replica_text: StringArray,
    /// replica − source, for numbers (NULL where either is NULL).
    delta: Option<ArrayRef>,
    replica_newer: Option<BooleanArray>,
}

/// replica − source of integers or decimals, exact until the one rounding to f64.
fn exact_deltas(sc: &ArrayRef, rc: &ArrayRef, common: &DataType) -> Result<ArrayRef> {
    let scale = match common {
        DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => (*s).max(0),
        _ => 0,
    };
    let wide = DataType::Decimal256(76, scale);
    let internal = |e: arrow::error::ArrowError| Error::Internal(e.to_string());
    let (s, r) = (
        cast(sc, &wide).map_err(internal)?,
        cast(rc, &wide).map_err(internal)?,
    );
    let (s, r) = (
        s.as_primitive::<arrow::datatypes::Decimal256Type>(),
        r.as_primitive::<arrow::datatypes::Decimal256Type>(),
    );
    // |values| < 10^76 < 2^253: the difference fits; the decimal text parses to the
    // nearest f64.
    let out: arrow::array::Float64Array = (0..s.len())
        .map(|row| {
            (s.is_valid(row) && r.is_valid(row)).then(|| {
                let d = r.value(row).wrapping_sub(s.value(row));
                format!("{d}e-{scale}").parse::<f64>().unwrap_or(f64::NAN)
            })
        })
        .collect();
    Ok(Arc::new(out))
}

impl FieldColumns {
    /// `common`: the type both values are compared in (the type of `sc{i}`, `rc{i}`).
    fn new(batch: &RecordBatch, i: usize, newest: bool, common: &DataType) -> Result<Self> {
        let sc = column(batch, &format!("sc{i}"));
        let rc = column(batch, &format!("rc{i}"));
        let internal = |e: arrow::error::ArrowError| Error::Internal(e.to_string());
        let delta = if common.is_floating() {
            let (s, r) = (
                cast(sc, &DataType::Float64).map_err(internal)?,
                cast(rc, &DataType::Float64).map_err(internal)?,
            );
            let (s, r) = (
                s.as_primitive::<Float64Type>(),
                r.as_primitive::<Float64Type>(),
            );
            Some(arrow::compute::kernels::numeric::sub(r, s).map_err(internal)?)
        } else if plan::is_numeric(common) {
            Some(exact_deltas(sc, rc, common)?)
        } else {
            None
        };
        let reason = column(batch, &format!("reason{i}"))
            .as_string::<i32>()
            .clone();
        let differs =
            arrow::compute::is_not_null(&reason).map_err(|e| Error::Internal(e.to_string()))?;
        let mut at = vec![u32::MAX; reason.len()];
        for (n, row) in differs.values().set_indices().enumerate() {
            at[row] = n as u32;
        }
        let text = |a: &ArrayRef| {
            let a =
                arrow::compute::filter(a, &differs).map_err(|e| Error::Internal(e.to_string()))?;
            canonical_text(&a)
        };
        Ok(FieldColumns {
            at,
            source_text: text(sc)?,
            replica_text: text(rc)?,
            reason,
            delta,
            replica_newer: newest
                .then(|| column(batch, &format!("rnewer{i}")).as_boolean().clone()),
        })
    }
    fn text(texts: &StringArray, at: u32) -> Option<&str> {
        let at = at as usize;
        (at < texts.len() && texts.is_valid(at)).then(|| texts.value(at))
    }
    fn source_text(&self, row: usize) -> Option<&str> {
        Self::text(&self.source_text, self.at[row])
    }
    fn replica_text(&self, row: usize) -> Option<&str> {
        Self::text(&self.replica_text, self.at[row])
    }
    /// replica − source, when both are numbers.
    fn delta(&self, row: usize) -> Option<f64> {
        let d = self.delta.as_ref()?.as_primitive::<Float64Type>();
        d.is_valid(row).then(|| d.value(row))
    }
}

/// Column builders for discrepancy rows.
#[derive(Default)]
struct DiscrepancyRows {
    run_id: StringBuilder,
    run_date: Date32Builder,
    job: StringBuilder,
    entity: StringBuilder,
    key: StringBuilder,
    kind: StringBuilder,
    field: StringBuilder,
    source_value: StringBuilder,
    replica_value: StringBuilder,
    owner: StringBuilder,
    action: StringBuilder,
    reason: StringBuilder,
    delta: Float64Builder,
    correction_id: StringBuilder,
    len: usize,
}

impl DiscrepancyRows {
    fn len(&self) -> usize {
        self.len
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        stamp: &RunStamp,
        entity: &str,
        key: &str,
        kind: &str,
        field: Option<&str>,
        source_value: Option<&str>,
        replica_value: Option<&str>,
        owner: Option<&str>,
        action: &str,
        reason: Option<&str>,
        delta: Option<f64>,
        correction_id: Option<&str>,
    ) {
        self.run_id.append_value(&stamp.run_id);
        self.run_date.append_value(days_since_epoch(stamp.run_date));
        self.job.append_value(&stamp.job);
        self.entity.append_value(entity);
        self.key.append_value(key);
        self.kind.append_value(kind);
        self.field.append_option(field);
        self.source_value.append_option(source_value);
        self.replica_value.append_option(replica_value);
        self.owner.append_option(owner);
        self.action.append_value(action);
        self.reason.append_option(reason);
        self.delta.append_option(delta);
        self.correction_id.append_option(correction_id);
        self.len += 1;
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        self.len = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.run_id.finish()),
            Arc::new(self.run_date.finish()),
            Arc::new(self.job.finish()),
            Arc::new(self.entity.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.field.finish()),
            Arc::new(self.source_value.finish()),
            Arc::new(self.replica_value.finish()),
            Arc::new(self.owner.finish()),
            Arc::new(self.action.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.delta.finish()),
            Arc::new(self.correction_id.finish()),
        ];
        RecordBatch::try_new(discrepancy_schema(), columns)
            .map_err(|e| Error::Internal(e.to_string()))
    }
}
