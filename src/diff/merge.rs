//! The key merge of the key summary: [`MergePairsExec`], a DataFusion operator that
//! pairs the rows of two snapshots sorted by their key, in one pass over each, and
//! emits only the pairs that need a look, in key order.
//!
//! Snapshots are often written in key order: a table read in primary-key order (an
//! InnoDB table scan, a query ending in `ORDER BY` the key) gives them so, and so does
//! `recon generate`. When both are, the two sides can be merged like sorted lists, with
//! no hash table and no second read: each side streams past once, holding a few
//! batches, and the pairs carry both sides' values to the diff, which reads them as
//! they come through the table [`MergedPairs`] (queries/pairs_diff.sql): the key
//! summary and the diff are one pass, and the pairs are never held. The hash join of
//! queries/key_pairs.sql instead holds the source side's keys in memory, and the diff
//! then reads the source snapshot again for the keys that differ.
//!
//! Its inputs are two SQL queries, one per side (queries/key_side.sql), each planned
//! as one partition so that its rows come in file order: the key columns `k0`, `k1`,
//! …, the fingerprint `__h` of the live row's compared fields (NULL when the row is
//! soft-deleted) and the side's raw mapped columns. Each input runs on a task of its
//! own, so the two sides are decoded on two cores while the merge walks them.
//!
//! The output has the columns of queries/key_pairs.sql: the keys, `__sr`, `__sl`,
//! `__rr`, `__rl` (the source and replica have the row, and have it live: 0 or 1),
//! `__x` (the XOR of the live rows' fingerprints), the source's values `sv0`, `sv1`, …
//! and the replica's `v0`, `v1`, …, NULL for a side that lacks the row. A pair needs a
//! look when a side lacks the row or when the fingerprints differ (a NULL differs from
//! a value).
//!
//! The merge is exact only when each side's keys strictly ascend (in the order of
//! arrow's row format, which for integers, dates, timestamps and strings is the
//! natural order, strings by bytes). The operator checks that as it goes and stops at
//! the first key that does not: the query then fails with [`NotMergeable`], the
//! outputs written so far are dropped, and the caller uses the hash join instead. A
//! side whose first keys are far ahead of the other's shows its disorder only once the
//! other side has caught up, every row of which is a pair by then; so recon first
//! checks the order from the row groups' key statistics or, when they cannot tell, by
//! this merge over the key columns alone, which reads a small share of the snapshots,
//! and runs the full merge only when the check passes.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, Int64Array, RecordBatch, UInt32Array,
    UInt64Array, new_null_array,
};
use arrow::compute::SortOptions;
use arrow::compute::{concat_batches, interleave, take};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Field, Int8Type, Int16Type, Int32Type, Int64Type, Schema,
    SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type,
};
use arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::{
    RecordBatchReceiverStreamBuilder, RecordBatchStreamAdapter,
};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;

/// Batches each input may run ahead of the merge. The two sides and the merge share
/// the cores, and a short lead leaves a core idle whenever one side or the merge is
/// descheduled: on the 20M benchmark pair (2 cores), 16 rather than 2 took the key
/// summary from about 3.3 to 3.0 s (alternating runs); 64 gained nothing more.
const AHEAD: usize = 16;

/// Why the merge stopped: a side's keys do not strictly ascend.
#[derive(Debug, Clone)]
pub struct NotMergeable {
    /// `source` or `replica`.
    pub side: &'static str,
    /// A key repeats (the rows are sorted but a key is not unique); otherwise a key is
    /// smaller than the one before it.
    pub repeated: bool,
}

impl fmt::Display for NotMergeable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.repeated {
            write!(f, "the {} snapshot repeats a key", self.side)
        } else {
            write!(f, "the {} snapshot is not sorted by its key", self.side)
        }
    }
}

impl std::error::Error for NotMergeable {}

impl NotMergeable {
    /// The reason `e` stopped a merge, if it is this one.
    pub fn find(e: &DataFusionError) -> Option<&NotMergeable> {
        match e.find_root() {
            DataFusionError::External(e) => e.downcast_ref(),
            _ => None,
        }
    }
}

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
        let merge = Merge {
            source: Cursor::new(spawned(&self.source, &context)?, Side::Source),
            replica: Cursor::new(spawned(&self.replica, &context)?, Side::Replica),
            keys,
            key_count: self.keys,
            schema: Arc::clone(&self.schema),
            pending: Vec::new(),
            pending_rows: 0,
            batch_size: context.session_config().batch_size(),
            reservation: MemoryConsumer::new("MergePairsExec").register(context.memory_pool()),
        };
        let stream = futures::stream::try_unfold(merge, |mut merge| async move {
            Ok(merge.next_batch().await?.map(|batch| (batch, merge)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Replica,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Replica => "replica",
        }
    }
}

/// How keys are compared.
enum KeyKind {
    /// One integer-like key column, widened to i64 (exact, and ordered alike).
    Int,
    /// Any other key: the row format, which compares by bytes in the columns' order.
    Rows(RowConverter),
}

impl KeyKind {
    fn new(types: &[DataType]) -> Result<Self> {
        if let [t] = types
            && int_like(t)
        {
            return Ok(KeyKind::Int);
        }
        let fields = types.iter().cloned().map(SortField::new).collect();
        Ok(KeyKind::Rows(RowConverter::new(fields)?))
    }

    fn prepare(&self, columns: &[ArrayRef]) -> Result<Keys> {
        Ok(match self {
            KeyKind::Int => Keys::Int(widen(&columns[0])?),
            KeyKind::Rows(converter) => Keys::Rows(converter.convert_columns(columns)?),
        })
    }
}

/// One batch's keys, prepared for comparing.
enum Keys {
    Int(Vec<i64>),
    Rows(Rows),
}

impl Keys {
    /// Whether some key is not greater than the key before it: `Some(true)` when the
    /// first such key repeats the one before, `Some(false)` when it is smaller.
    fn first_unordered(&self) -> Option<bool> {
        match self {
            Keys::Int(k) => k.windows(2).find(|w| w[0] >= w[1]).map(|w| w[0] == w[1]),
            Keys::Rows(r) => (1..r.num_rows())
                .find(|&i| r.row(i - 1) >= r.row(i))
                .map(|i| r.row(i - 1) == r.row(i)),
        }
    }

    /// The key of the batch's last row.
    fn last(&self) -> Option<LastKey> {
        match self {
            Keys::Int(k) => k.last().map(|v| LastKey::Int(*v)),
            Keys::Rows(r) => {
                (r.num_rows() > 0).then(|| LastKey::Row(r.row(r.num_rows() - 1).owned()))
            }
        }
    }

    /// How the batch's first key compares with `last`, the key before it.
    fn first_after(&self, last: &LastKey) -> Ordering {
        match (self, last) {
            (Keys::Int(k), LastKey::Int(l)) => k[0].cmp(l),
            (Keys::Rows(r), LastKey::Row(l)) => r.row(0).cmp(&l.row()),
            _ => Ordering::Greater,
        }
    }
}

/// The last key of a side's previous batch.
enum LastKey {
    Int(i64),
    Row(OwnedRow),
}

/// One side's input and its current batch.
struct Cursor {
    input: SendableRecordBatchStream,
    side: Side,
    batch: Option<Current>,
    last: Option<LastKey>,
    done: bool,
}

/// A side's current batch, its keys and fingerprints, and the next row to merge.
struct Current {
    batch: RecordBatch,
    keys: Keys,
    fingerprints: UInt64Array,
    pos: usize,
}

impl Current {
    fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// Row `i`'s fingerprint, `None` when the row is not live.
    fn fingerprint(&self, i: usize) -> Option<u64> {
        self.fingerprints
            .is_valid(i)
            .then(|| self.fingerprints.value(i))
    }
}

impl Cursor {
    fn new(input: SendableRecordBatchStream, side: Side) -> Self {
        Cursor {
            input,
            side,
            batch: None,
            last: None,
            done: false,
        }
    }

    /// Has a row to merge, or has none left at all.
    fn ready(&self) -> bool {
        self.done || self.batch.as_ref().is_some_and(|c| c.pos < c.rows())
    }

    /// Loads the next batch with rows, checking that its keys ascend strictly from the
    /// previous batch's; marks the side done at its end.
    async fn load(&mut self, kind: &KeyKind, key_count: usize) -> Result<()> {
        self.batch = None;
        loop {
            let Some(batch) = self.input.next().await.transpose()? else {
                self.done = true;
                return Ok(());
            };
            if batch.num_rows() == 0 {
                continue;
            }
            let keys = kind.prepare(&batch.columns()[..key_count])?;
            let unordered = match (&self.last, keys.first_unordered()) {
                (_, Some(repeated)) => Some(repeated),
                (Some(last), None) => match keys.first_after(last) {
                    Ordering::Greater => None,
                    Ordering::Equal => Some(true),
                    Ordering::Less => Some(false),
                },
                (None, None) => None,
            };
            if let Some(repeated) = unordered {
                return Err(DataFusionError::External(Box::new(NotMergeable {
                    side: self.side.as_str(),
                    repeated,
                })));
            }
            self.last = keys.last();
            let fingerprints = batch
                .column(key_count)
                .as_primitive_opt::<arrow::datatypes::UInt64Type>()
                .ok_or_else(|| {
                    DataFusionError::Internal("the key merge's __h is not UInt64".into())
                })?
                .clone();
            self.batch = Some(Current {
                batch,
                keys,
                fingerprints,
                pos: 0,
            });
            return Ok(());
        }
    }
}

/// The state of one execution.
struct Merge {
    source: Cursor,
    replica: Cursor,
    keys: KeyKind,
    key_count: usize,
    schema: SchemaRef,
    /// Pairs gathered and not yet emitted.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    batch_size: usize,
    /// The memory of the pairs gathered and not yet emitted; running out of it fails
    /// the query with `ResourcesExhausted`, and recon then uses the join.
    reservation: MemoryReservation,
}

impl Merge {
    /// The next batch of pairs, or `None` at the end of both sides.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if !self.source.ready() {
                self.source.load(&self.keys, self.key_count).await?;
            }
            if !self.replica.ready() {
                self.replica.load(&self.keys, self.key_count).await?;
            }
            if self.source.done && self.replica.done {
                return self.flush();
            }
            let pairs = self.step();
            if !pairs.is_empty() {
                let batch = self.gather(&pairs)?;
                self.reservation.try_grow(batch.get_array_memory_size())?;
                self.pending_rows += batch.num_rows();
                self.pending.push(batch);
            }
            if self.pending_rows >= self.batch_size {
                return self.flush();
            }
        }
    }

    fn flush(&mut self) -> Result<Option<RecordBatch>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let batch = concat_batches(&self.schema, &self.pending)?;
        self.pending.clear();
        self.pending_rows = 0;
        self.reservation.free();
        Ok(Some(batch))
    }

    /// Merges the current batches until one of them runs out (or, when a side has no
    /// rows left, takes the other side's whole batch): the pairs that need a look, as
    /// row indices into the current batches.
    fn step(&mut self) -> Vec<(Option<u32>, Option<u32>)> {
        let mut pairs = Vec::new();
        match (self.source.batch.as_mut(), self.replica.batch.as_mut()) {
            (Some(s), Some(r)) => {
                let (i, j) = match (&s.keys, &r.keys) {
                    (Keys::Int(a), Keys::Int(b)) => walk(s, r, |i, j| a[i].cmp(&b[j]), &mut pairs),
                    (Keys::Rows(a), Keys::Rows(b)) => {
                        walk(s, r, |i, j| a.row(i).cmp(&b.row(j)), &mut pairs)
                    }
                    _ => unreachable!("both sides' keys are prepared alike"),
                };
                s.pos = i;
                r.pos = j;
            }
            (Some(s), _) if self.replica.done => {
                pairs.extend((s.pos..s.rows()).map(|i| (Some(i as u32), None)));
                s.pos = s.rows();
            }
            (_, Some(r)) if self.source.done => {
                pairs.extend((r.pos..r.rows()).map(|j| (None, Some(j as u32))));
                r.pos = r.rows();
            }
            _ => {}
        }
        pairs
    }

    /// The output rows of `pairs` (row indices into the current batches).
    fn gather(&self, pairs: &[(Option<u32>, Option<u32>)]) -> Result<RecordBatch> {
        let s = self.source.batch.as_ref();
        let r = self.replica.batch.as_ref();
        let k = self.key_count;
        let s_idx: UInt32Array = pairs.iter().map(|p| p.0).collect();
        let r_idx: UInt32Array = pairs.iter().map(|p| p.1).collect();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        // The key: each pair's from the side that has the row.
        for c in 0..k {
            let key = match (s, r) {
                (Some(s), Some(r)) => {
                    let from: Vec<(usize, usize)> = pairs
                        .iter()
                        .map(|p| match p {
                            (Some(i), _) => (0, *i as usize),
                            (None, Some(j)) => (1, *j as usize),
                            (None, None) => unreachable!("a pair has a side"),
                        })
                        .collect();
                    interleave(
                        &[s.batch.column(c).as_ref(), r.batch.column(c).as_ref()],
                        &from,
                    )?
                }
                (Some(s), None) => take(s.batch.column(c), &s_idx, None)?,
                (None, Some(r)) => take(r.batch.column(c), &r_idx, None)?,
                (None, None) => unreachable!("pairs come from a batch"),
            };
            columns.push(compact(key));
        }
        let has = |p: Option<u32>| i64::from(p.is_some());
        let live = |c: Option<&Current>, p: Option<u32>| {
            p.and_then(|i| c.and_then(|c| c.fingerprint(i as usize)))
        };
        columns.push(Arc::new(Int64Array::from_iter_values(
            pairs.iter().map(|p| has(p.0)),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(
            pairs.iter().map(|p| i64::from(live(s, p.0).is_some())),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(
            pairs.iter().map(|p| has(p.1)),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(
            pairs.iter().map(|p| i64::from(live(r, p.1).is_some())),
        )));
        let xor: UInt64Array = pairs
            .iter()
            .map(|p| match (live(s, p.0), live(r, p.1)) {
                (Some(a), Some(b)) => Some(a ^ b),
                (a, b) => a.or(b),
            })
            .collect();
        columns.push(Arc::new(xor));
        // Each side's carried columns, NULL where the side lacks the row.
        let carried = self.schema.fields().len() - k - 5;
        let (s_cols, r_cols) = (
            self.source.input.schema().fields().len() - k - 1,
            self.replica.input.schema().fields().len() - k - 1,
        );
        debug_assert_eq!(s_cols + r_cols, carried);
        for (current, count, idx, offset) in [(s, s_cols, &s_idx, 0), (r, r_cols, &r_idx, s_cols)] {
            for c in 0..count {
                let column = match current {
                    Some(cur) => take(cur.batch.column(k + 1 + c), idx, None)?,
                    None => new_null_array(
                        self.schema.field(k + 5 + offset + c).data_type(),
                        pairs.len(),
                    ),
                };
                columns.push(compact(column));
            }
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

/// Walks the current batches `s` and `r` from their positions in key order (`cmp`
/// compares their rows) until one runs out, pushing the pairs that need a look; the
/// positions it stopped at.
fn walk(
    s: &Current,
    r: &Current,
    cmp: impl Fn(usize, usize) -> Ordering,
    pairs: &mut Vec<(Option<u32>, Option<u32>)>,
) -> (usize, usize) {
    let (mut i, mut j) = (s.pos, r.pos);
    let (ns, nr) = (s.rows(), r.rows());
    while i < ns && j < nr {
        match cmp(i, j) {
            Ordering::Less => {
                pairs.push((Some(i as u32), None));
                i += 1;
            }
            Ordering::Greater => {
                pairs.push((None, Some(j as u32)));
                j += 1;
            }
            Ordering::Equal => {
                if s.fingerprint(i) != r.fingerprint(j) {
                    pairs.push((Some(i as u32), Some(j as u32)));
                }
                i += 1;
                j += 1;
            }
        }
    }
    (i, j)
}

/// `a` with string and binary views copied out of the buffers they share with the
/// decoded Parquet pages: a few pairs then neither hold whole pages nor count them
/// against the memory pool (an array's memory size counts every buffer its views
/// point into, once per batch that shares it).
fn compact(a: ArrayRef) -> ArrayRef {
    match a.data_type() {
        DataType::Utf8View => Arc::new(a.as_string_view().gc()),
        DataType::BinaryView => Arc::new(a.as_binary_view().gc()),
        _ => a,
    }
}

/// Key types compared as one i64: integers that fit, dates and timestamps.
fn int_like(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(..)
    )
}

/// The values of an [`int_like`] key column as i64 (the column has no NULLs: the
/// queries keep complete keys only).
fn widen(a: &ArrayRef) -> Result<Vec<i64>> {
    fn values<T: ArrowPrimitiveType>(a: &ArrayRef) -> Vec<i64>
    where
        T::Native: Into<i64>,
    {
        a.as_primitive::<T>()
            .values()
            .iter()
            .map(|v| (*v).into())
            .collect()
    }
    Ok(match a.data_type() {
        DataType::Int8 => values::<Int8Type>(a),
        DataType::Int16 => values::<Int16Type>(a),
        DataType::Int32 => values::<Int32Type>(a),
        DataType::Int64 => values::<Int64Type>(a),
        DataType::UInt8 => values::<UInt8Type>(a),
        DataType::UInt16 => values::<UInt16Type>(a),
        DataType::UInt32 => values::<UInt32Type>(a),
        DataType::Date32 => values::<Date32Type>(a),
        DataType::Date64 => values::<Date64Type>(a),
        DataType::Timestamp(TimeUnit::Second, _) => values::<TimestampSecondType>(a),
        DataType::Timestamp(TimeUnit::Millisecond, _) => values::<TimestampMillisecondType>(a),
        DataType::Timestamp(TimeUnit::Microsecond, _) => values::<TimestampMicrosecondType>(a),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => values::<TimestampNanosecondType>(a),
        t => {
            return Err(DataFusionError::Internal(format!(
                "key type {t} is not compared as an integer"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// A side of (k0 Int64, k1 Utf8, __h UInt64 with NULL for not live, v0 Utf8), in
    /// batches of `per_batch` rows.
    fn side(rows: &[(i64, &str, Option<u64>, &str)], prefix: &str, per_batch: usize) -> MemTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k0", DataType::Int64, false),
            Field::new("k1", DataType::Utf8, false),
            Field::new("__h", DataType::UInt64, true),
            Field::new(format!("{prefix}0"), DataType::Utf8, true),
        ]));
        let batches = rows
            .chunks(per_batch)
            .map(|c| {
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(Int64Array::from_iter_values(c.iter().map(|r| r.0))),
                        Arc::new(StringArray::from_iter_values(c.iter().map(|r| r.1))),
                        Arc::new(c.iter().map(|r| r.2).collect::<UInt64Array>()),
                        Arc::new(StringArray::from_iter_values(c.iter().map(|r| r.3))),
                    ],
                )
                .unwrap()
            })
            .collect();
        MemTable::try_new(schema, vec![batches]).unwrap()
    }

    /// The merge of the tables `s` and `r` of `ctx`, each read whole.
    async fn merge_of(ctx: &SessionContext) -> MergePairsExec {
        let mut sides = Vec::new();
        for table in ["s", "r"] {
            let df = ctx.sql(&format!("SELECT * FROM {table}")).await.unwrap();
            sides.push(df.create_physical_plan().await.unwrap());
        }
        let replica = sides.pop().unwrap();
        MergePairsExec::try_new(sides.pop().unwrap(), replica, 2).unwrap()
    }

    /// The merge's pairs as (k0, k1, __sr, __sl, __rr, __rl, __x, sv0, v0) rows.
    async fn merge(
        source: MemTable,
        replica: MemTable,
    ) -> Result<
        Vec<(
            i64,
            String,
            i64,
            i64,
            i64,
            i64,
            Option<u64>,
            Option<String>,
            Option<String>,
        )>,
    > {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        ctx.register_table("s", Arc::new(source)).unwrap();
        ctx.register_table("r", Arc::new(replica)).unwrap();
        let exec = Arc::new(merge_of(&ctx).await);
        let batches = datafusion::physical_plan::collect(exec, ctx.task_ctx()).await?;
        let mut out = Vec::new();
        for b in &batches {
            let i64s = |i: usize| b.column(i).as_primitive::<Int64Type>().clone();
            let text = |i: usize| {
                let a = arrow::compute::cast(b.column(i), &DataType::Utf8).unwrap();
                a.as_string::<i32>().clone()
            };
            let (k0, k1, sr, sl, rr, rl) = (i64s(0), text(1), i64s(2), i64s(3), i64s(4), i64s(5));
            let x = b.column(6).as_primitive::<arrow::datatypes::UInt64Type>();
            let (sv, rv) = (text(7), text(8));
            for row in 0..b.num_rows() {
                out.push((
                    k0.value(row),
                    k1.value(row).to_string(),
                    sr.value(row),
                    sl.value(row),
                    rr.value(row),
                    rl.value(row),
                    x.is_valid(row).then(|| x.value(row)),
                    sv.is_valid(row).then(|| sv.value(row).to_string()),
                    rv.is_valid(row).then(|| rv.value(row).to_string()),
                ));
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn pairs_are_the_rows_that_differ_in_key_order() {
        let s = [
            (1, "a", Some(1), "s1a"),
            (1, "b", Some(2), "s1b"),
            (2, "a", Some(3), "s2a"),
            (3, "a", None, "s3a"),
            (5, "a", Some(5), "s5a"),
        ];
        let r = [
            (0, "z", Some(9), "r0z"),
            (1, "b", Some(2), "r1b"),
            (2, "a", Some(4), "r2a"),
            (3, "a", Some(6), "r3a"),
            (4, "a", Some(7), "r4a"),
        ];
        let some = |v: &str| Some(v.to_string());
        let expected = vec![
            (0, "z".to_string(), 0, 0, 1, 1, Some(9), None, some("r0z")),
            (1, "a".to_string(), 1, 1, 0, 0, Some(1), some("s1a"), None),
            (
                2,
                "a".to_string(),
                1,
                1,
                1,
                1,
                Some(3 ^ 4),
                some("s2a"),
                some("r2a"),
            ),
            (
                3,
                "a".to_string(),
                1,
                0,
                1,
                1,
                Some(6),
                some("s3a"),
                some("r3a"),
            ),
            (4, "a".to_string(), 0, 0, 1, 1, Some(7), None, some("r4a")),
            (5, "a".to_string(), 1, 1, 0, 0, Some(5), some("s5a"), None),
        ];
        // Whatever the batches, the same pairs.
        for (bs, br) in [(1, 1), (2, 3), (5, 5)] {
            let got = merge(side(&s, "sv", bs), side(&r, "v", br)).await.unwrap();
            assert_eq!(got, expected, "batches of {bs} and {br}");
        }
        // An empty side: every row of the other is a pair.
        let got = merge(side(&s, "sv", 2), side(&[], "v", 1)).await.unwrap();
        assert_eq!(got.len(), s.len());
    }

    #[tokio::test]
    async fn keys_out_of_order_or_repeated_stop_the_merge() {
        let sorted = [(1, "a", Some(1), "x"), (2, "a", Some(1), "x")];
        for (rows, repeated) in [
            (vec![(1, "a", Some(1), "x"), (1, "a", Some(1), "x")], true),
            (vec![(1, "b", Some(1), "x"), (1, "a", Some(1), "x")], false),
            (vec![(2, "a", Some(1), "x"), (1, "a", Some(1), "x")], false),
        ] {
            // Within a batch and across two.
            for per_batch in [2, 1] {
                let e = merge(side(&sorted, "sv", 2), side(&rows, "v", per_batch))
                    .await
                    .unwrap_err();
                let why = NotMergeable::find(&e).expect("not mergeable");
                assert_eq!(why.side, "replica");
                assert_eq!(why.repeated, repeated, "{rows:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_query_over_the_merged_pairs_reads_them_in_key_order_without_a_sort() {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        let source: Vec<_> = (0..5000).map(|k| (k * 2, "a", Some(1), "x")).collect();
        // Every row differs: each key on both sides is a pair.
        let replica: Vec<_> = (0..5000).map(|k| (k * 3, "a", Some(2), "y")).collect();
        ctx.register_table("s", Arc::new(side(&source, "sv", 700)))
            .unwrap();
        ctx.register_table("r", Arc::new(side(&replica, "v", 900)))
            .unwrap();
        let merge = merge_of(&ctx).await;
        ctx.register_table("pairs", Arc::new(MergedPairs::new(Arc::new(merge))))
            .unwrap();
        let df = ctx
            .sql("SELECT k0, \"__sr\" + \"__rr\" AS sides FROM pairs WHERE \"__sr\" = 1 ORDER BY k0, k1")
            .await
            .unwrap();
        let physical = df.clone().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(physical.as_ref())
            .indent(false)
            .to_string();
        assert!(!shown.contains("SortExec"), "{shown}");
        assert!(shown.contains("MergePairsExec"), "{shown}");
        let batches = df.collect().await.unwrap();
        let keys: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        // Every source key, in order; the multiples of 6 are on both sides.
        let expected: Vec<i64> = (0..5000).map(|k| k * 2).collect();
        assert_eq!(keys, expected);
        let both: i64 = batches
            .iter()
            .map(|b| {
                b.column(1)
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .filter(|v| **v == 2)
                    .count() as i64
            })
            .sum();
        assert_eq!(both, (0..10000).filter(|k| k % 6 == 0).count() as i64);
    }

    #[tokio::test]
    async fn the_merge_holds_only_the_pairs_not_yet_emitted() {
        use datafusion::execution::memory_pool::GreedyMemoryPool;
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        // Two sides with no key in common: every row is a pair, about 4 MB of them,
        // four times the pool.
        let source: Vec<_> = (0..50_000).map(|k| (k, "a", Some(1), "x")).collect();
        let replica: Vec<_> = (50_000..100_000).map(|k| (k, "a", Some(1), "x")).collect();
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(1 << 20)))
            .build_arc()
            .unwrap();
        let ctx = SessionContext::new_with_config_rt(
            SessionConfig::new().with_target_partitions(1),
            runtime,
        );
        ctx.register_table("s", Arc::new(side(&source, "sv", 4096)))
            .unwrap();
        ctx.register_table("r", Arc::new(side(&replica, "v", 4096)))
            .unwrap();
        let merge = Arc::new(merge_of(&ctx).await);
        let mut stream = merge.execute(0, ctx.task_ctx()).unwrap();
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            rows += batch.unwrap().num_rows();
        }
        assert_eq!(rows, 100_000);
    }
}
