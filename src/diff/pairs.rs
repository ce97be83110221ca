//! The key join of the key summary: [`KeyPairsExec`], a DataFusion operator that pairs
//! the rows of the two sides by key and emits only the pairs that need a look.
//!
//! Its inputs are two SQL queries, one per side (queries/key_side.sql): the key
//! columns `k0`, `k1`, …, the fingerprint `__h` of the live row's compared fields (NULL
//! when the row is soft-deleted) and the values each side carries along. The source
//! side is held in memory (the build side); the replica streams past it, one output
//! partition per replica partition. A pair needs a look when a side lacks the row or
//! when the fingerprints differ (a NULL differs from a value). With 1% drift that is a
//! few percent of the rows, so the operator gathers the carried values of those rows
//! only, where a hash join followed by a filter gathers them for every row.
//!
//! The output is the table queries/key_pairs_summary.sql reads: the keys, `__sr`,
//! `__sl`, `__rr`, `__rl` (the source and replica have the row, and have it live:
//! 0 or 1), `__x` (the XOR of the live rows' fingerprints) and the carried values of
//! both sides, NULL for a side that lacks the row.
//!
//! The pairs are exact only when no key found on both sides is repeated: the operator
//! pairs a replica row with the first source row of its key. It notices every such
//! key (a source key inserted twice and then matched, or a source row matched twice)
//! and reports it through [`KeyPairsExec::exact`]; the caller then uses the hash
//! aggregation of queries/keys.sql instead. A key repeated on one side only is exact:
//! each of its rows is emitted, and the summary counts them.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, Int64Array, RecordBatch, UInt32Array,
    UInt64Array, new_null_array,
};
use arrow::compute::{interleave, take};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Field, Int8Type, Int16Type, Int32Type, Int64Type, Schema,
    SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type,
};
use arrow::row::{RowConverter, SortField};
use datafusion::common::hash_utils::RandomState;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// Rows of the source side emitted per batch after the probe (the source-only rows).
const TAIL_CHUNK: usize = 65_536;

/// The seed of the key hash; any fixed value.
const SEED: u64 = 0x7265_636f_6e5f_6b65;

type SharedBuild =
    Shared<BoxFuture<'static, std::result::Result<Arc<Build>, Arc<DataFusionError>>>>;

/// Pairs the source's rows (held) with the replica's (streamed) by key and emits the
/// pairs that need a look; see the module documentation.
#[derive(Debug)]
pub struct KeyPairsExec {
    source: Arc<dyn ExecutionPlan>,
    replica: Arc<dyn ExecutionPlan>,
    /// Number of leading key columns in both inputs.
    keys: usize,
    /// Source rows expected (a capacity hint for the hash table).
    rows_hint: usize,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    state: Arc<State>,
}

/// What the partitions of one execution share.
struct State {
    build: Mutex<Option<SharedBuild>>,
    /// Replica partitions still probing; the last one to finish emits the source-only rows.
    probing: AtomicUsize,
    /// The source rows the finished partitions matched, one bit each.
    matched: Mutex<Vec<u64>>,
    /// A key found on both sides is repeated.
    inexact: AtomicBool,
}

impl State {
    /// Adds a finished partition's bitmap of matched source rows; a row two partitions
    /// matched has a repeated key. Returns every partition's matches to the last one.
    fn merge(&self, mine: Vec<u64>) -> Option<Vec<u64>> {
        let mut all = self.matched.lock().unwrap_or_else(|e| e.into_inner());
        if all.is_empty() {
            *all = mine;
        } else {
            let mut twice = false;
            for (a, m) in all.iter_mut().zip(mine) {
                twice |= *a & m != 0;
                *a |= m;
            }
            if twice {
                self.inexact.store(true, Ordering::Relaxed);
            }
        }
        (self.probing.fetch_sub(1, Ordering::AcqRel) == 1).then(|| std::mem::take(&mut *all))
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("inexact", &self.inexact)
            .finish_non_exhaustive()
    }
}

impl KeyPairsExec {
    /// `source` and `replica` yield the key columns, `__h` (UInt64) and the carried
    /// columns, in that order; the key columns must have the same types on both sides.
    pub fn try_new(
        source: Arc<dyn ExecutionPlan>,
        replica: Arc<dyn ExecutionPlan>,
        keys: usize,
        rows_hint: u64,
    ) -> Result<Self> {
        let (s, r) = (source.schema(), replica.schema());
        let fingerprint = |schema: &Schema, side: &str| -> Result<()> {
            match schema.fields().get(keys) {
                Some(f) if f.name() == "__h" && f.data_type() == &DataType::UInt64 => Ok(()),
                _ => Err(DataFusionError::Internal(format!(
                    "the {side} side of the key join has no UInt64 column __h after its {keys} keys"
                ))),
            }
        };
        fingerprint(&s, "source")?;
        fingerprint(&r, "replica")?;
        for i in 0..keys {
            if s.field(i).data_type() != r.field(i).data_type() {
                return Err(DataFusionError::Internal(format!(
                    "key column {i} of the key join is {} on the source side and {} on the replica side",
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
        let partitions = replica.output_partitioning().partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            source,
            replica,
            keys,
            rows_hint: usize::try_from(rows_hint).unwrap_or(usize::MAX),
            schema,
            properties: Arc::new(properties),
            state: Arc::new(State {
                build: Mutex::new(None),
                probing: AtomicUsize::new(partitions),
                matched: Mutex::new(Vec::new()),
                inexact: AtomicBool::new(false),
            }),
        })
    }

    /// `false` when a key found on both sides is repeated, which makes the pairs wrong
    /// for that key; meaningful once every partition has run to its end.
    pub fn exact(&self) -> bool {
        !self.state.inexact.load(Ordering::Relaxed)
    }

    /// The build, started by the first partition to ask for it.
    fn build(&self, context: &Arc<TaskContext>) -> SharedBuild {
        let mut slot = self.state.build.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(build) = slot.as_ref() {
            return build.clone();
        }
        let build = Build::collect(
            Arc::clone(&self.source),
            self.keys,
            self.rows_hint,
            Arc::clone(context),
        )
        .map(|r| r.map(Arc::new).map_err(Arc::new))
        .boxed()
        .shared();
        *slot = Some(build.clone());
        build
    }
}

impl DisplayAs for KeyPairsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "KeyPairsExec: keys={}", self.keys)
    }
}

impl ExecutionPlan for KeyPairsExec {
    fn name(&self) -> &str {
        "KeyPairsExec"
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
                "KeyPairsExec has two children".into(),
            ));
        }
        let replica = children.pop().expect("two children");
        let source = children.pop().expect("two children");
        Ok(Arc::new(Self::try_new(
            source,
            replica,
            self.keys,
            self.rows_hint as u64,
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let build = self.build(&context);
        let replica = Arc::clone(&self.replica);
        let schema = Arc::clone(&self.schema);
        let state = Arc::clone(&self.state);
        let keys = self.keys;
        let batch_size = context.session_config().batch_size();
        let stream = async move {
            let build = build.await.map_err(DataFusionError::Shared)?;
            let input = replica.execute(partition, context)?;
            // The source rows this partition matched, one bit each: a plain bitmap of
            // its own, so that probing takes no atomic operation per row.
            let matched = Arc::new(Mutex::new(vec![0u64; build.rows().div_ceil(64)]));
            let probe = {
                let (build, schema, state) =
                    (Arc::clone(&build), Arc::clone(&schema), Arc::clone(&state));
                let matched = Arc::clone(&matched);
                input.map(move |batch| {
                    let mut matched = matched.lock().unwrap_or_else(|e| e.into_inner());
                    build.probe(&batch?, keys, &schema, &state, &mut matched)
                })
            };
            // Once this partition has probed all its rows, it adds its bitmap to the
            // shared one, and the last one to finish emits the source rows no replica
            // row matched.
            let tail = futures::stream::once(async move {
                let mine = std::mem::take(&mut *matched.lock().unwrap_or_else(|e| e.into_inner()));
                let all = state.merge(mine);
                let chunk = TAIL_CHUNK.max(batch_size);
                let rows = if all.is_some() { build.rows() } else { 0 };
                let all = Arc::new(all.unwrap_or_default());
                futures::stream::iter((0..rows).step_by(chunk)).map(move |start| {
                    let end = (start + chunk).min(build.rows());
                    build.unmatched(start..end, &all, &schema)
                })
            })
            .flatten();
            Ok::<_, DataFusionError>(probe.chain(tail))
        };
        let stream = futures::stream::once(stream)
            .try_flatten()
            .try_filter_map(|b: Option<RecordBatch>| async move { Ok(b) });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

/// The source side, held: its rows' keys, fingerprints and carried columns.
struct Build {
    keys: Keys,
    /// Number of key columns.
    key_count: usize,
    /// Per row: the key on the integer path, and the fingerprint, side by side so that
    /// a probe that finds the key has the fingerprint in the same cache line.
    slots: Vec<Slot>,
    /// Per row: the row is live (it has a fingerprint).
    live: Vec<bool>,
    /// The first row of each key.
    index: Index,
    /// The held rows: the key columns, then the carried columns.
    batches: Vec<RecordBatch>,
    /// The first row of each batch, and the row count at the end.
    starts: Vec<usize>,
    /// One NULL of each held column's type, for rows the source lacks.
    nulls: Vec<ArrayRef>,
    random: RandomState,
    _reservation: MemoryReservation,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The key widened to i64 on the integer path ([`Keys::Int`]), else 0.
    key: i64,
    fingerprint: u64,
}

/// Where the first row of each key is found.
enum Index {
    /// Integer keys that are dense (most primary keys): the entry of key `k` is at
    /// `k - min`, 0 when no row has that key, else the row's index plus one with
    /// [`DENSE_LIVE`] and [`DENSE_REPEATED`]. Neighbouring keys are neighbours here, so
    /// rows read in key order read the index and the held rows in order.
    Dense { min: i64, entries: Vec<u32> },
    /// Any other key, by its hash: each entry an [`entry`].
    Hashed(HashTable<u64>),
}

const DENSE_LIVE: u32 = 1 << 31;
const DENSE_REPEATED: u32 = 1 << 30;

/// A dense index may have this many entries per held row (4 bytes each).
const DENSE_SPREAD: u64 = 4;

impl Index {
    /// Indexes the held rows, once all are held.
    fn new(
        keys: &Keys,
        slots: &[Slot],
        live: &[bool],
        random: &RandomState,
        reservation: &MemoryReservation,
    ) -> Result<Self> {
        if let Keys::Int = keys
            && let Some(min) = slots.iter().map(|s| s.key).min()
        {
            let max = slots.iter().map(|s| s.key).max().unwrap_or(min);
            let span = (max as i128 - min as i128 + 1) as u64;
            if span <= (slots.len() as u64).saturating_mul(DENSE_SPREAD) {
                reservation.try_grow(span as usize * 4)?;
                let mut entries = vec![0u32; span as usize];
                for (i, s) in slots.iter().enumerate() {
                    let e = &mut entries[(s.key - min) as usize];
                    if *e == 0 {
                        *e = (i as u32 + 1) | if live[i] { DENSE_LIVE } else { 0 };
                    } else {
                        *e |= DENSE_REPEATED;
                    }
                }
                return Ok(Index::Dense { min, entries });
            }
        }
        let mut table = HashTable::with_capacity(slots.len());
        reservation.try_grow(table.allocation_size())?;
        for (i, slot) in slots.iter().enumerate() {
            let hash = keys.hash(random, i, slot);
            match table.entry(
                hash,
                |&e| {
                    let j = index(e);
                    same_hash(e, hash) && keys.same(j, &slots[j], i, slot)
                },
                |&e| {
                    let j = index(e);
                    keys.hash(random, j, &slots[j])
                },
            ) {
                Entry::Occupied(mut first) => *first.get_mut() |= REPEATED,
                Entry::Vacant(v) => {
                    v.insert(entry(hash, i, live[i]));
                }
            }
        }
        Ok(Index::Hashed(table))
    }
}

/// A table entry: the upper 32 bits of the key's hash, then the row's index (30 bits)
/// and two flags, [`LIVE`] and [`REPEATED`]. With the hash in the entry, finding a key
/// reads the table alone; the held key is read once, to confirm the match.
fn entry(hash: u64, row: usize, live: bool) -> u64 {
    (hash & !0xffff_ffff) | row as u64 | if live { LIVE } else { 0 }
}

/// The entry's upper hash bits equal `hash`'s.
fn same_hash(entry: u64, hash: u64) -> bool {
    (entry ^ hash) >> 32 == 0
}

/// The entry's row index.
fn index(entry: u64) -> usize {
    (entry & INDEX) as usize
}

const INDEX: u64 = (1 << 30) - 1;
/// The row is live.
const LIVE: u64 = 1 << 31;
/// The row is the first of a key that the source repeats.
const REPEATED: u64 = 1 << 30;

/// How the held rows' keys are compared.
enum Keys {
    /// One integer-like key column, widened to i64 (exact), held in [`Slot::key`].
    Int,
    /// Any other key: each row's key in the row format, which compares by bytes.
    Rows {
        converter: RowConverter,
        data: Vec<u8>,
        offsets: Vec<usize>,
    },
}

/// One batch's keys, prepared for hashing.
enum BatchKeys {
    Int(Vec<i64>),
    Rows(arrow::row::Rows),
}

impl BatchKeys {
    fn hash(&self, random: &RandomState, row: usize) -> u64 {
        match self {
            BatchKeys::Int(k) => random.hash_one(k[row]),
            BatchKeys::Rows(r) => random.hash_one(r.row(row).data()),
        }
    }

    /// The widened key of `row` on the integer path, else 0.
    fn int(&self, row: usize) -> i64 {
        match self {
            BatchKeys::Int(k) => k[row],
            BatchKeys::Rows(_) => 0,
        }
    }
}

impl Keys {
    fn new(types: &[DataType]) -> Result<Self> {
        if let [t] = types
            && int_like(t)
        {
            return Ok(Keys::Int);
        }
        let converter = RowConverter::new(types.iter().cloned().map(SortField::new).collect())?;
        Ok(Keys::Rows {
            converter,
            data: Vec::new(),
            offsets: vec![0],
        })
    }

    /// `columns`' keys, prepared for hashing and comparing with the held ones.
    fn prepare(&self, columns: &[ArrayRef]) -> Result<BatchKeys> {
        Ok(match self {
            Keys::Int => BatchKeys::Int(widen(&columns[0])?),
            Keys::Rows { converter, .. } => BatchKeys::Rows(converter.convert_columns(columns)?),
        })
    }

    /// The held row `i` (with `slot`) has the key of row `row` of `batch`.
    fn eq(&self, i: usize, slot: &Slot, batch: &BatchKeys, row: usize) -> bool {
        match (self, batch) {
            (Keys::Int, BatchKeys::Int(b)) => slot.key == b[row],
            (Keys::Rows { data, offsets, .. }, BatchKeys::Rows(b)) => {
                &data[offsets[i]..offsets[i + 1]] == b.row(row).data()
            }
            _ => false,
        }
    }

    /// The held rows `i` and `j` have the same key.
    fn same(&self, i: usize, si: &Slot, j: usize, sj: &Slot) -> bool {
        match self {
            Keys::Int => si.key == sj.key,
            Keys::Rows { data, offsets, .. } => {
                data[offsets[i]..offsets[i + 1]] == data[offsets[j]..offsets[j + 1]]
            }
        }
    }

    /// The hash of the held row `i`'s key.
    fn hash(&self, random: &RandomState, i: usize, slot: &Slot) -> u64 {
        match self {
            Keys::Int => random.hash_one(slot.key),
            Keys::Rows { data, offsets, .. } => random.hash_one(&data[offsets[i]..offsets[i + 1]]),
        }
    }

    fn push(&mut self, batch: &BatchKeys) {
        if let (Keys::Rows { data, offsets, .. }, BatchKeys::Rows(b)) = (self, batch) {
            for row in b.iter() {
                data.extend_from_slice(row.data());
                offsets.push(data.len());
            }
        }
    }

    fn allocated(&self) -> usize {
        match self {
            Keys::Int => 0,
            Keys::Rows { data, offsets, .. } => data.capacity() + offsets.capacity() * 8,
        }
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

/// The build while the source's partitions feed it.
struct Builder {
    keys: Keys,
    key_count: usize,
    slots: Vec<Slot>,
    live: Vec<bool>,
    batches: Vec<RecordBatch>,
    starts: Vec<usize>,
    random: RandomState,
    reservation: MemoryReservation,
    /// Bytes of the per-row vectors and the table already reserved.
    reserved_index: usize,
}

impl Builder {
    fn index_bytes(&self) -> usize {
        self.keys.allocated() + self.slots.capacity() * size_of::<Slot>() + self.live.capacity()
    }

    /// Adds one source batch, whose keys are prepared.
    fn push(&mut self, keys: BatchKeys, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        let start = self.slots.len();
        if start + n > INDEX as usize {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the key join holds at most {INDEX} source rows"
            )));
        }
        let held = held_columns(batch, self.key_count)?;
        self.reservation.try_grow(held.get_array_memory_size())?;
        let fingerprint = batch
            .column(self.key_count)
            .as_primitive::<arrow::datatypes::UInt64Type>();
        self.slots.extend(
            fingerprint
                .values()
                .iter()
                .enumerate()
                .map(|(row, f)| Slot {
                    key: keys.int(row),
                    fingerprint: *f,
                }),
        );
        self.live
            .extend((0..n).map(|row| fingerprint.is_valid(row)));
        self.keys.push(&keys);
        self.starts.push(start);
        self.batches.push(held);
        let index = self.index_bytes();
        if index > self.reserved_index {
            self.reservation.try_grow(index - self.reserved_index)?;
            self.reserved_index = index;
        }
        Ok(())
    }
}

/// `batch` without its fingerprint column: the keys, then the carried columns.
fn held_columns(batch: &RecordBatch, keys: usize) -> Result<RecordBatch> {
    let columns: Vec<usize> = (0..batch.num_columns()).filter(|&c| c != keys).collect();
    Ok(batch.project(&columns)?)
}

impl Build {
    /// Runs every partition of `source` on its own task and holds what they yield.
    async fn collect(
        source: Arc<dyn ExecutionPlan>,
        keys: usize,
        rows_hint: usize,
        context: Arc<TaskContext>,
    ) -> Result<Build> {
        let schema = source.schema();
        let types: Vec<DataType> = (0..keys)
            .map(|i| schema.field(i).data_type().clone())
            .collect();
        let reservation = MemoryConsumer::new("KeyPairsExec build").register(context.memory_pool());
        // The hint is the source's rows with a complete key, exact unless the snapshot
        // changed since its footers were read, so the per-row vectors and the table are
        // sized once: reserved first (16 + 1 bytes a row, and 9 per bucket of a table
        // at most 7/8 full, rounded up to a power of two), then allocated.
        let estimate = rows_hint.saturating_mul(40);
        reservation.try_grow(estimate)?;
        let builder = Arc::new(Mutex::new(Builder {
            keys: Keys::new(&types)?,
            key_count: keys,
            slots: Vec::with_capacity(rows_hint),
            live: Vec::with_capacity(rows_hint),
            batches: Vec::new(),
            starts: Vec::new(),
            random: RandomState::with_seed(SEED),
            reservation,
            reserved_index: estimate,
        }));
        let mut tasks = tokio::task::JoinSet::new();
        for partition in 0..source.output_partitioning().partition_count() {
            let mut stream = source.execute(partition, Arc::clone(&context))?;
            let builder = Arc::clone(&builder);
            let types = types.clone();
            tasks.spawn(async move {
                let prepare = Keys::new(&types)?;
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    // Keys are prepared before taking the lock.
                    let prepared = prepare.prepare(&batch.columns()[..keys])?;
                    builder
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(prepared, &batch)?;
                }
                Ok::<_, DataFusionError>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| DataFusionError::External(Box::new(e)))??;
        }
        drop(tasks);
        let b = Arc::into_inner(builder)
            .expect("the build's tasks have ended")
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let rows = b.slots.len();
        let index = Index::new(&b.keys, &b.slots, &b.live, &b.random, &b.reservation)?;
        // Batches are numbered in the order they were added, so their first rows ascend.
        let batches = b.batches;
        let mut starts = b.starts;
        starts.push(rows);
        let nulls = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| {
                let columns: Vec<usize> =
                    (0..schema.fields().len()).filter(|&c| c != keys).collect();
                Arc::new(schema.project(&columns).expect("columns of the schema"))
            })
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect();
        Ok(Build {
            keys: b.keys,
            key_count: keys,
            slots: b.slots,
            live: b.live,
            index,
            batches,
            starts,
            nulls,
            random: b.random,
            _reservation: b.reservation,
        })
    }

    fn rows(&self) -> usize {
        self.slots.len()
    }

    /// The batch holding row `i` and the row's index in it.
    fn locate(&self, i: usize) -> (usize, usize) {
        let b = self.starts.partition_point(|&s| s <= i) - 1;
        (b, i - self.starts[b])
    }

    /// Pairs one replica batch with the held rows; the pairs that need a look, or
    /// `None` when there are none.
    fn probe(
        &self,
        batch: &RecordBatch,
        keys: usize,
        schema: &SchemaRef,
        state: &State,
        matched_rows: &mut [u64],
    ) -> Result<Option<RecordBatch>> {
        let prepared = self.keys.prepare(&batch.columns()[..keys])?;
        let fingerprint = batch
            .column(keys)
            .as_primitive::<arrow::datatypes::UInt64Type>();
        let n = batch.num_rows();
        // Each row's entry as (row index, live, repeated). For a hashed index in three
        // passes, each a loop whose rows do not wait on one another, so that the
        // processor fetches many rows' table entries and held rows at once: hash, find
        // the entry with the same hash, confirm the key.
        let found: Vec<Option<(usize, bool, bool)>> = match &self.index {
            Index::Dense { min, entries } => {
                let BatchKeys::Int(k) = &prepared else {
                    unreachable!("a dense index has integer keys")
                };
                k.iter()
                    .map(|&k| {
                        let e = *entries.get(usize::try_from(k.wrapping_sub(*min)).ok()?)?;
                        (e != 0).then(|| {
                            let row = (e & !(DENSE_LIVE | DENSE_REPEATED)) as usize - 1;
                            (row, e & DENSE_LIVE != 0, e & DENSE_REPEATED != 0)
                        })
                    })
                    .collect()
            }
            Index::Hashed(table) => {
                let hashes: Vec<u64> = (0..n).map(|row| prepared.hash(&self.random, row)).collect();
                let entries: Vec<Option<u64>> = hashes
                    .iter()
                    .map(|&hash| table.find(hash, |&e| same_hash(e, hash)).copied())
                    .collect();
                entries
                    .into_iter()
                    .enumerate()
                    .map(|(row, found)| {
                        let e = match found {
                            Some(e)
                                if self.keys.eq(
                                    index(e),
                                    &self.slots[index(e)],
                                    &prepared,
                                    row,
                                ) =>
                            {
                                e
                            }
                            // Another key with the same 32 hash bits: look again, by the key.
                            Some(_) => *table.find(hashes[row], |&e| {
                                let j = index(e);
                                same_hash(e, hashes[row])
                                    && self.keys.eq(j, &self.slots[j], &prepared, row)
                            })?,
                            None => return None,
                        };
                        Some((index(e), e & LIVE != 0, e & REPEATED != 0))
                    })
                    .collect()
            }
        };
        // (replica row, matched source row) for the rows that need a look.
        let mut rows: Vec<u32> = Vec::new();
        let mut matched: Vec<Option<u32>> = Vec::new();
        let mut repeated = false;
        for (row, found) in found.into_iter().enumerate() {
            match found {
                None => {
                    rows.push(row as u32);
                    matched.push(None);
                }
                Some((i, live, repeated_key)) => {
                    let (word, bit) = (i / 64, 1u64 << (i % 64));
                    repeated |= matched_rows[word] & bit != 0 || repeated_key;
                    matched_rows[word] |= bit;
                    let source = live.then(|| self.slots[i].fingerprint);
                    let replica = fingerprint.is_valid(row).then(|| fingerprint.value(row));
                    if source != replica {
                        rows.push(row as u32);
                        matched.push(Some(i as u32));
                    }
                }
            }
        }
        if repeated {
            state.inexact.store(true, Ordering::Relaxed);
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let n = rows.len();
        let indices = UInt32Array::from(rows);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for c in 0..keys {
            columns.push(take(batch.column(c), &indices, None)?);
        }
        let live = |j: &Option<u32>| j.is_some_and(|j| self.live[j as usize]);
        columns.push(Arc::new(Int64Array::from_iter_values(
            matched.iter().map(|j| j.is_some() as i64),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(
            matched.iter().map(|j| live(j) as i64),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(
            1, n,
        ))));
        columns.push(Arc::new(Int64Array::from_iter_values(
            indices
                .values()
                .iter()
                .map(|&r| fingerprint.is_valid(r as usize) as i64),
        )));
        columns.push(Arc::new(
            indices
                .values()
                .iter()
                .zip(&matched)
                .map(|(&r, j)| {
                    let source = live(j).then(|| self.slots[j.expect("live") as usize].fingerprint);
                    let replica = fingerprint
                        .is_valid(r as usize)
                        .then(|| fingerprint.value(r as usize));
                    match (source, replica) {
                        (Some(s), Some(r)) => Some(s ^ r),
                        (s, r) => s.or(r),
                    }
                })
                .collect::<UInt64Array>(),
        ));
        let held = self.gather(&matched)?;
        columns.extend(held.into_iter().skip(keys));
        for c in keys + 1..batch.num_columns() {
            columns.push(take(batch.column(c), &indices, None)?);
        }
        Ok(Some(RecordBatch::try_new(Arc::clone(schema), columns)?))
    }

    /// The held columns of `rows` (NULL for `None`), in order.
    fn gather(&self, rows: &[Option<u32>]) -> Result<Vec<ArrayRef>> {
        // The batches the rows come from, each once; index 0 is the NULL row.
        let mut used: Vec<usize> = Vec::new();
        let mut slot = datafusion::common::HashMap::<usize, usize>::new();
        let indices: Vec<(usize, usize)> = rows
            .iter()
            .map(|j| match j {
                None => (0, 0),
                Some(j) => {
                    let (b, row) = self.locate(*j as usize);
                    let s = *slot.entry(b).or_insert_with(|| {
                        used.push(b);
                        used.len()
                    });
                    (s, row)
                }
            })
            .collect();
        (0..self.nulls.len())
            .map(|c| {
                let mut arrays: Vec<&dyn Array> = Vec::with_capacity(used.len() + 1);
                arrays.push(self.nulls[c].as_ref());
                arrays.extend(used.iter().map(|&b| self.batches[b].column(c).as_ref()));
                Ok(interleave(&arrays, &indices)?)
            })
            .collect()
    }

    /// The held rows in `range` that no replica row matched (per `matched`, one bit a
    /// row), as source-only pairs.
    fn unmatched(
        &self,
        range: std::ops::Range<usize>,
        matched: &[u64],
        schema: &SchemaRef,
    ) -> Result<Option<RecordBatch>> {
        let rows: Vec<Option<u32>> = range
            .filter(|&i| matched[i / 64] & (1 << (i % 64)) == 0)
            .map(|i| Some(i as u32))
            .collect();
        if rows.is_empty() {
            return Ok(None);
        }
        let n = rows.len();
        let live = |j: &Option<u32>| j.is_some_and(|j| self.live[j as usize]);
        let held = self.gather(&rows)?;
        let keys = self.key_count;
        let mut columns: Vec<ArrayRef> = held[..keys].to_vec();
        columns.push(Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(
            1, n,
        ))));
        columns.push(Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|j| live(j) as i64),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(
            0, n,
        ))));
        columns.push(Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(
            0, n,
        ))));
        columns.push(Arc::new(
            rows.iter()
                .map(|j| live(j).then(|| self.slots[j.expect("live") as usize].fingerprint))
                .collect::<UInt64Array>(),
        ));
        columns.extend(held.into_iter().skip(keys));
        let done = columns.len();
        for f in &schema.fields()[done..] {
            columns.push(new_null_array(f.data_type(), n));
        }
        Ok(Some(RecordBatch::try_new(Arc::clone(schema), columns)?))
    }
}
