//! The DataFusion session every recon query runs in, and how each of the entity's
//! queries is planned ([`Tuning`]) and reported on after it ran.

use std::sync::Arc;

use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::budget;
use crate::error::{Error, Result};

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
        .map_err(|e| Error::bug("setting up the query runtime", e))?;
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// How a query is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tuning {
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
pub(super) async fn physical_plan(
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
pub(super) fn executed(
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
pub(super) fn spilled_bytes(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> usize {
    let mut spilled = 0;
    for_each_operator(plan, &mut |op| {
        spilled += op
            .metrics()
            .and_then(|m| m.spilled_bytes())
            .unwrap_or_default();
    });
    spilled
}

/// Calls `f` on every operator of `plan`, parents before children.
pub(super) fn for_each_operator(
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    f: &mut impl FnMut(&Arc<dyn datafusion::physical_plan::ExecutionPlan>),
) {
    f(plan);
    for child in plan.children() {
        for_each_operator(child, f);
    }
}
