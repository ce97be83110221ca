//! Benchmark snapshot pairs: one wide table (a key and 11 mixed columns) at any size,
//! with known drift: 1% of rows have one changed field, 0.5% are missing from the right
//! side and 0.5% exist only there. Deterministic (a hash of the row number, no clock),
//! streamed in chunks so that 100 million rows need no more memory than one chunk.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::error::{Error, Result};

const CHUNK: u64 = 256 * 1024;
/// 2024-01-01T00:00:00Z in microseconds.
const BASE_US: i64 = 1_704_067_200_000_000;

/// The discrepancy counts a correct diff of the pair must find.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Expected {
    pub rows: u64,
    pub missing_in_replica: u64,
    pub extra_in_replica: u64,
    pub field_mismatch: u64,
}

/// The compared columns, in file order after the key `id`.
pub const FIELDS: [&str; 11] = [
    "qty",
    "amount",
    "price",
    "ratio",
    "name",
    "note",
    "category",
    "active",
    "created_at",
    "updated_at",
    "day",
];

fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("qty", DataType::Int32, false),
        Field::new("amount", DataType::Int64, false),
        Field::new("price", DataType::Decimal128(18, 4), false),
        Field::new("ratio", DataType::Float64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("note", DataType::Utf8, true),
        Field::new("category", DataType::Utf8, false),
        Field::new("active", DataType::Boolean, false),
        Field::new("created_at", ts.clone(), false),
        Field::new("updated_at", ts, true),
        Field::new("day", DataType::Date32, false),
    ]))
}

/// SplitMix64: a good, cheap hash of the row number.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One row's values; `changed` says which field (index into [`FIELDS`]) the right side alters.
struct Row {
    id: i64,
    qty: i32,
    amount: i64,
    price: i128,
    ratio: f64,
    name: String,
    note: Option<String>,
    category: &'static str,
    active: bool,
    created_at: i64,
    updated_at: Option<i64>,
    day: i32,
}

const CATEGORIES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

fn row(id: u64) -> Row {
    let h = mix(id);
    Row {
        id: id as i64,
        qty: (h % 1000) as i32,
        amount: (h % 1_000_000_000) as i64,
        price: (h % 10_000_000_000) as i128,
        ratio: (h % 1_000_000) as f64 / 1000.0,
        name: format!("name-{:08x}", h as u32),
        note: (!h.is_multiple_of(7)).then(|| format!("note {}", h % 1000)),
        category: CATEGORIES[(h % 8) as usize],
        active: h.is_multiple_of(2),
        created_at: BASE_US + (h % 1_000_000_000_000) as i64,
        updated_at: (!h.is_multiple_of(11)).then(|| BASE_US + (h % 1_000_000_000) as i64),
        day: 19_000 + (h % 1000) as i32,
    }
}

/// The right side's version of a drifted row: exactly one field differs.
fn drift(mut r: Row) -> Row {
    match (r.id as u64 / 100) % 11 {
        0 => r.qty += 1,
        1 => r.amount += 7,
        2 => r.price += 1,
        3 => r.ratio += 0.5,
        4 => r.name.push('x'),
        5 => r.note = Some(r.note.map_or("was null".into(), |n| format!("{n}!"))),
        6 => r.category = if r.category == "a" { "b" } else { "a" },
        7 => r.active = !r.active,
        8 => r.created_at += 1,
        9 => r.updated_at = Some(r.updated_at.map_or(BASE_US, |u| u + 1_000_000)),
        _ => r.day += 1,
    }
    r
}

fn is_missing(id: u64) -> bool {
    id.is_multiple_of(200)
}
fn is_drifted(id: u64) -> bool {
    id % 100 == 1
}

fn batch(schema: &SchemaRef, rows: &[Row]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.id))),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.qty))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.amount))),
        Arc::new(
            Decimal128Array::from_iter_values(rows.iter().map(|r| r.price))
                .with_precision_and_scale(18, 4)
                .map_err(|e| Error::bug("generating the sample data", e))?,
        ),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.ratio))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.name))),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.note.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.category),
        )),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.active)))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.created_at))
                .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from_iter(rows.iter().map(|r| r.updated_at))
                .with_timezone("UTC"),
        ),
        Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| r.day))),
    ];
    RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| Error::bug("generating the sample data", e))
}

fn writer(path: &Path, schema: &SchemaRef) -> Result<ArrowWriter<File>> {
    let file = File::create(path)
        .map_err(|e| Error::Internal(format!("creating {}: {e}", path.display())))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(CHUNK as usize * 2))
        .set_created_by("recon generate".into())
        .build();
    ArrowWriter::try_new(file, Arc::clone(schema), Some(props))
        .map_err(|e| Error::bug("generating the sample data", e))
}

/// Writes `left.parquet`, `right.parquet` and `expected.json` into `dir`.
pub fn write_pair(dir: &Path, rows: u64) -> Result<Expected> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Internal(format!("creating {}: {e}", dir.display())))?;
    let schema = schema();
    let mut left = writer(&dir.join("left.parquet"), &schema)?;
    let mut right = writer(&dir.join("right.parquet"), &schema)?;
    let fail = |e: parquet::errors::ParquetError| Error::bug("writing the benchmark pair", e);
    let mut start = 0;
    while start < rows {
        let end = (start + CHUNK).min(rows);
        let l: Vec<Row> = (start..end).map(row).collect();
        let r: Vec<Row> = (start..end)
            .filter(|i| !is_missing(*i))
            .map(|i| if is_drifted(i) { drift(row(i)) } else { row(i) })
            .collect();
        left.write(&batch(&schema, &l)?).map_err(fail)?;
        right.write(&batch(&schema, &r)?).map_err(fail)?;
        start = end;
    }
    // Rows only the right side has, after the shared ones.
    let extra = rows / 200;
    let mut start = 0;
    while start < extra {
        let end = (start + CHUNK).min(extra);
        let r: Vec<Row> = (start..end).map(|i| row(rows + i)).collect();
        right.write(&batch(&schema, &r)?).map_err(fail)?;
        start = end;
    }
    left.close().map_err(fail)?;
    right.close().map_err(fail)?;
    let expected = Expected {
        rows,
        missing_in_replica: (0..rows).step_by(200).count() as u64,
        extra_in_replica: extra,
        field_mismatch: (1..rows).step_by(100).count() as u64,
    };
    let json = serde_json::to_vec_pretty(&expected)
        .map_err(|e| Error::bug("generating the sample data", e))?;
    std::fs::write(dir.join("expected.json"), json).map_err(|e| {
        Error::bug(
            format!("writing {}", dir.join("expected.json").display()),
            e,
        )
    })?;
    Ok(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_changes_exactly_one_field() {
        for id in (1..5000).step_by(100) {
            let (a, b) = (row(id), drift(row(id)));
            let differs = [
                a.qty != b.qty,
                a.amount != b.amount,
                a.price != b.price,
                a.ratio != b.ratio,
                a.name != b.name,
                a.note != b.note,
                a.category != b.category,
                a.active != b.active,
                a.created_at != b.created_at,
                a.updated_at != b.updated_at,
                a.day != b.day,
            ];
            assert_eq!(differs.iter().filter(|d| **d).count(), 1, "row {id}");
        }
    }
}
