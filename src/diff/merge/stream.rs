//! The key merge itself: the state of one execution of [`super::MergePairsExec`], a
//! cursor per side walking both in key order, checking as it goes that each side's keys
//! strictly ascend ([`NotMergeable`] when not) and gathering the pairs that need a look.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, Int64Array, RecordBatch, UInt32Array,
    UInt64Array, new_null_array,
};
use arrow::compute::{concat_batches, interleave, take};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Int8Type, Int16Type, Int32Type, Int64Type, SchemaRef,
    TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type,
};
use arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use crate::diff::plan::Side;

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

/// How keys are compared.
pub(super) enum KeyKind {
    /// One integer-like key column, widened to i64 (exact, and ordered alike).
    Int,
    /// Any other key: the row format, which compares by bytes in the columns' order.
    Rows(RowConverter),
}

impl KeyKind {
    pub(super) fn new(types: &[DataType]) -> Result<Self> {
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
pub(super) struct Merge {
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
    /// The merge of the inputs `source` and `replica`, whose first `key_count` columns
    /// are the key (compared as `keys`), into pairs of `schema`, emitted in batches of
    /// about `batch_size` rows; the pairs not yet emitted are held in `reservation`.
    pub(super) fn new(
        source: SendableRecordBatchStream,
        replica: SendableRecordBatchStream,
        keys: KeyKind,
        key_count: usize,
        schema: SchemaRef,
        batch_size: usize,
        reservation: MemoryReservation,
    ) -> Self {
        Merge {
            source: Cursor::new(source, Side::Source),
            replica: Cursor::new(replica, Side::Replica),
            keys,
            key_count,
            schema,
            pending: Vec::new(),
            pending_rows: 0,
            batch_size,
            reservation,
        }
    }

    /// The pairs as a stream of batches, the merge running as it is polled.
    pub(super) fn into_stream(self) -> SendableRecordBatchStream {
        let schema = Arc::clone(&self.schema);
        let stream = futures::stream::try_unfold(self, |mut merge| async move {
            Ok(merge.next_batch().await?.map(|batch| (batch, merge)))
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, stream))
    }

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
