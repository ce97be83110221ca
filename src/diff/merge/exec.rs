//! The key merge's plan node, [`MergePairsExec`]: checks its two inputs, declares the
//! pairs' schema and key order, and runs each input on a task of its own for the merge
//! of `stream.rs`; and [`MergedPairs`], the merge as a table for the diff query.

use std::fmt;
use std::sync::Arc;

use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;

use super::stream::{KeyKind, Merge};

/// Batches each input may run ahead of the merge. The two sides and the merge share
/// the cores, and a short lead leaves a core idle whenever one side or the merge is
/// descheduled: on the 20M benchmark pair (2 cores), 16 rather than 2 took the key
/// summary from about 3.3 to 3.0 s (alternating runs); 64 gained nothing more.
const AHEAD: usize = 16;

/// Merges two inputs sorted by key and emits the pairs that need a look; see the
/// module documentation.
#[derive(Debug)]
pub struct MergePairsExec {
    source: Arc<dyn ExecutionPlan>,
    replica: Arc<dyn ExecutionPlan>,
    /// Number of leading key columns in both inputs.
    keys: usize,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl MergePairsExec {
    /// `source` and `replica` each have one partition and yield the key columns, `__h`
    /// (UInt64) and the carried columns, in that order; the key columns must have the
    /// same types on both sides.
    pub fn try_new(
        source: Arc<dyn ExecutionPlan>,
        replica: Arc<dyn ExecutionPlan>,
        keys: usize,
    ) -> Result<Self> {
        let (s, r) = (source.schema(), replica.schema());
        for (plan, schema, side) in [(&source, &s, "source"), (&replica, &r, "replica")] {
            let partitions = plan.output_partitioning().partition_count();
            if partitions != 1 {
                return Err(DataFusionError::Internal(format!(
                    "the {side} side of the key merge has {partitions} partitions, not 1"
                )));
            }
            match schema.fields().get(keys) {
                Some(f) if f.name() == "__h" && f.data_type() == &DataType::UInt64 => {}
                _ => {
                    return Err(DataFusionError::Internal(format!(
                        "the {side} side of the key merge has no UInt64 column __h after its {keys} keys"
                    )));
                }
            }
        }
        let types: Vec<DataType> = (0..keys).map(|i| s.field(i).data_type().clone()).collect();
        // Keys of a type the row format cannot compare fail here, at planning.
        KeyKind::new(&types)?;
        for i in 0..keys {
            if s.field(i).data_type() != r.field(i).data_type() {
                return Err(DataFusionError::Internal(format!(
                    "key column {i} of the key merge is {} on the source side and {} on the replica side",
                    s.field(i).data_type(),
                    r.field(i).data_type()
                )));
            }
        }
        let flag = |name: &str| Field::new(name, DataType::Int64, false);
        let mut fields: Vec<Field> = (0..keys)
            .map(|i| s.field(i).clone().with_nullable(true))
            .collect();
        fields.extend([
            flag("__sr"),
            flag("__sl"),
            flag("__rr"),
            flag("__rl"),
            Field::new("__x", DataType::UInt64, true),
        ]);
        for side in [&s, &r] {
            fields.extend(
                side.fields()[keys + 1..]
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true)),
            );
        }
        let schema = Arc::new(Schema::new(fields));
        // The pairs come in ascending key order, as a query's `ORDER BY` the keys
        // (ascending, NULLs last: no key is NULL) wants them: no sort is planned.
        let ordering = (0..keys).map(|i| {
            PhysicalSortExpr::new(
                Arc::new(Column::new(schema.field(i).name(), i)),
                SortOptions {
                    descending: false,
                    nulls_first: false,
                },
            )
        });
        let properties = PlanProperties::new(
            EquivalenceProperties::new_with_orderings(Arc::clone(&schema), [ordering]),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            source,
            replica,
            keys,
            schema,
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for MergePairsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MergePairsExec: keys={}", self.keys)
    }
}

impl ExecutionPlan for MergePairsExec {
    fn name(&self) -> &str {
        "MergePairsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.source, &self.replica]
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
        if children.len() != 2 {
            return Err(DataFusionError::Internal(
                "MergePairsExec has two children".into(),
            ));
        }
        let replica = children.pop().expect("two children");
        let source = children.pop().expect("two children");
        let merge = Self::try_new(source, replica, self.keys)?;
        Ok(Arc::new(merge))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "MergePairsExec has one partition, not {}",
                partition + 1
            )));
        }
        let types: Vec<DataType> = (0..self.keys)
            .map(|i| self.schema.field(i).data_type().clone())
            .collect();
        let keys = KeyKind::new(&types)?;
        let merge = Merge::new(
            spawned(&self.source, &context)?,
            spawned(&self.replica, &context)?,
            keys,
            self.keys,
            Arc::clone(&self.schema),
            context.session_config().batch_size(),
            MemoryConsumer::new("MergePairsExec").register(context.memory_pool()),
        );
        Ok(merge.into_stream())
    }
}

/// A key merge as a table, for the diff query to read its pairs as the merge emits
/// them: the key summary and the diff then make one pass, and the pairs are never
/// held. A scan is the merge planned beforehand (with a projection when one is asked
/// for); it runs the merge each time it is executed.
#[derive(Debug)]
pub struct MergedPairs {
    merge: Arc<dyn ExecutionPlan>,
}

impl MergedPairs {
    /// `merge`: a [`MergePairsExec`] (or a plan over one).
    pub fn new(merge: Arc<dyn ExecutionPlan>) -> Self {
        MergedPairs { merge }
    }
}

#[async_trait::async_trait]
impl TableProvider for MergedPairs {
    fn schema(&self) -> SchemaRef {
        self.merge.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(projection) = projection else {
            return Ok(Arc::clone(&self.merge));
        };
        let schema = self.merge.schema();
        let columns = projection.iter().map(|&i| {
            let name = schema.field(i).name().clone();
            let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(&name, i));
            (column, name)
        });
        Ok(Arc::new(ProjectionExec::try_new(
            columns,
            Arc::clone(&self.merge),
        )?))
    }
}

/// Runs `plan`'s one partition on a task of its own, up to [`AHEAD`] batches ahead.
fn spawned(
    plan: &Arc<dyn ExecutionPlan>,
    context: &Arc<TaskContext>,
) -> Result<SendableRecordBatchStream> {
    let mut input = plan.execute(0, Arc::clone(context))?;
    let mut builder = RecordBatchReceiverStreamBuilder::new(plan.schema(), AHEAD);
    let tx = builder.tx();
    builder.spawn(async move {
        while let Some(batch) = input.next().await {
            let failed = batch.is_err();
            if tx.send(batch).await.is_err() || failed {
                break;
            }
        }
        Ok(())
    });
    Ok(builder.build())
}
