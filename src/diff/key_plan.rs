//! How the two sides of an entity are matched by key: the key merge when both
//! snapshots are sorted by the key ([`merge_plan`]), else a hash join of the keys or,
//! when a key repeats or memory is short, a hash aggregation ([`key_summary`]). Every
//! plan gives the same outputs; only time and memory differ.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::columns::{DiffColumns, column};
use super::plan::{EntityPlan, KeyPlan, Side};
use super::session::{Tuning, for_each_operator, physical_plan};
use super::{budget, merge, progress};
use crate::error::{Error, Result};
use crate::snapshot::{Snapshot, StatsOrder};

/// The `key_summary_plan` of an entity matched by the key merge.
pub(super) const MERGE_PLAN: &str = "merge";

/// Why a streamed key merge stopped, when it stopped for a reason that sends the
/// entity to the join (see [`merge_stop`]).
pub(super) fn merge_stopped(e: &Error) -> Option<String> {
    match e {
        Error::Query { source, .. } => merge_stop(source, "the key merge"),
        _ => None,
    }
}

/// Why `what`, a key merge, stopped, when it stopped for a reason that sends the
/// entity to the join: a key out of order or repeated, or the memory limit.
pub(super) fn merge_stop(e: &DataFusionError, what: &str) -> Option<String> {
    if let Some(why) = merge::NotMergeable::find(e) {
        Some(why.to_string())
    } else if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) {
        Some(format!("{what} ran out of memory"))
    } else {
        None
    }
}

/// Which sides' rows the pairs table [`PAIRS_TABLE`] carries for the diff, after a key
/// summary by join or aggregation (a merge's pairs go to the diff as they come).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Carried {
    /// There is no pairs table: the key summary was an aggregation.
    None,
    /// The replica's (the key join).
    Replica,
}

impl Carried {
    /// The name of the key summary's plan that leaves these pairs.
    pub(super) fn plan(self) -> &'static str {
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
pub(super) async fn merge_plan(
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
pub(super) async fn key_summary<Q, FQ>(
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
pub(super) async fn key_order(
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
pub(super) const PAIRS_TABLE: &str = "__key_pairs";

/// Memory the key join holds per source row (key, fingerprint, hash table),
/// rounded up for wide keys.
pub(super) const PAIR_BYTES_PER_ROW: u64 = 64;

/// Checks that the key join's pairs are exact: no key found on both sides repeated.
///
/// The join yields `max(s_k, 1) * max(r_k, 1)` rows for a key with `s_k` source and
/// `r_k` replica rows. Over the keys on both sides, the pairs number `Σ s_k r_k`, which
/// equals both `Σ s_k` and `Σ r_k` exactly when every `s_k` and `r_k` is 1. The
/// one-sided rows are all kept, so with `J` the join's output rows, `A` the source-only
/// and `B` the replica-only rows, the check is `J - B = source rows` and
/// `J - A = replica rows`.
pub(super) fn pairs_are_exact(
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
    let source_only = one_sided(DiffColumns::REPLICA_ROW)?;
    let replica_only = one_sided(DiffColumns::SOURCE_ROW)?;
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
pub(super) fn find_joins(
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    out: &mut Vec<u64>,
) {
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
