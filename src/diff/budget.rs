//! A row budget on the key join: [`RowBudgetExec`] passes its input's batches through
//! and stops the query with [`OverBudget`] once more rows than it allows have passed.
//!
//! The key join (queries/key_pairs.sql) pairs every row of a key with every row of the
//! same key on the other side. Without repeats it emits at most one row per row of the
//! two sides, so a join that emits more than the sides' rows together has met a key
//! repeated on both sides, and would go on to emit their cross product: 20,000 rows
//! of one key on each side make 400 million pairs. The budget stops it at the first
//! batch past that bound, before the cross product is built, and the entity's key
//! summary goes to the aggregation, which counts the repeats instead of pairing them.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

/// Why a query under a [`RowBudgetExec`] stopped.
#[derive(Debug)]
pub struct OverBudget {
    pub budget: u64,
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the key join emitted more than {} rows, the two sides' rows together: a key on both sides is repeated",
            self.budget
        )
    }
}

impl std::error::Error for OverBudget {}

impl OverBudget {
    /// The budget that stopped `e`, if it was one.
    pub fn find(e: &DataFusionError) -> Option<&OverBudget> {
        match e.find_root() {
            DataFusionError::External(e) => e.downcast_ref(),
            _ => None,
        }
    }
}

/// Passes `input` through, at most `budget` rows over all its partitions.
#[derive(Debug)]
pub struct RowBudgetExec {
    input: Arc<dyn ExecutionPlan>,
    budget: u64,
    /// Rows passed so far, shared by the partitions.
    passed: Arc<AtomicU64>,
}

impl RowBudgetExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, budget: u64) -> Self {
        RowBudgetExec {
            input,
            budget,
            passed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `plan` with every hash join in it under a budget of `budget` rows.
    pub fn on_joins(plan: Arc<dyn ExecutionPlan>, budget: u64) -> Result<Arc<dyn ExecutionPlan>> {
        let children: Vec<Arc<dyn ExecutionPlan>> = plan
            .children()
            .into_iter()
            .map(|c| Self::on_joins(Arc::clone(c), budget))
            .collect::<Result<_>>()?;
        let plan = if children.is_empty() {
            plan
        } else {
            plan.replace_children(
                children,
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
            )?
        };
        if plan.name() == "HashJoinExec" {
            Ok(Arc::new(RowBudgetExec::new(plan, budget)))
        } else {
            Ok(plan)
        }
    }
}

impl DisplayAs for RowBudgetExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RowBudgetExec: budget={}", self.budget)
    }
}

impl ExecutionPlan for RowBudgetExec {
    fn name(&self) -> &str {
        "RowBudgetExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(RowBudgetExec::new(input, self.budget))),
            _ => Err(DataFusionError::Internal(
                "RowBudgetExec has one child".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let (budget, passed) = (self.budget, Arc::clone(&self.passed));
        let stream = input.map(move |batch| {
            let batch = batch?;
            let rows = batch.num_rows() as u64;
            if passed.fetch_add(rows, Ordering::Relaxed) + rows > budget {
                return Err(DataFusionError::External(Box::new(OverBudget { budget })));
            }
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
