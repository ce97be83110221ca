//! One cell of a correction file, as the apply stage binds it.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Decimal256Type, Float16Type, Float32Type,
    Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, Time32MillisecondType,
    Time32SecondType, Time64MicrosecondType, Time64NanosecondType, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    UInt(u64),
    Float(f64),
    /// Exact decimal text, e.g. `-12.50`.
    Decimal(String),
    Text(String),
    Bool(bool),
    Date(NaiveDate),
    /// A timestamp; `utc` when the column is zoned (values are UTC).
    Timestamp {
        at: NaiveDateTime,
        utc: bool,
    },
    Time(NaiveTime),
    Bytes(Vec<u8>),
}

impl Value {
    /// Reads row `i` of `a`; an unsupported type is an error naming it.
    pub fn from_array(a: &dyn Array, i: usize) -> Result<Value, String> {
        if a.is_null(i) {
            return Ok(Value::Null);
        }
        let ts = |at: Option<NaiveDateTime>, utc: bool| -> Result<Value, String> {
            at.map(|at| Value::Timestamp { at, utc })
                .ok_or_else(|| "timestamp out of range".to_string())
        };
        let time = |nanos: i64| -> Result<Value, String> {
            NaiveTime::from_num_seconds_from_midnight_opt(
                nanos.div_euclid(1_000_000_000) as u32,
                nanos.rem_euclid(1_000_000_000) as u32,
            )
            .map(Value::Time)
            .ok_or_else(|| "time out of range".to_string())
        };
        Ok(match a.data_type() {
            DataType::Int8 => Value::Int(a.as_primitive::<Int8Type>().value(i) as i64),
            DataType::Int16 => Value::Int(a.as_primitive::<Int16Type>().value(i) as i64),
            DataType::Int32 => Value::Int(a.as_primitive::<Int32Type>().value(i) as i64),
            DataType::Int64 => Value::Int(a.as_primitive::<Int64Type>().value(i)),
            DataType::UInt8 => Value::UInt(a.as_primitive::<UInt8Type>().value(i) as u64),
            DataType::UInt16 => Value::UInt(a.as_primitive::<UInt16Type>().value(i) as u64),
            DataType::UInt32 => Value::UInt(a.as_primitive::<UInt32Type>().value(i) as u64),
            DataType::UInt64 => Value::UInt(a.as_primitive::<UInt64Type>().value(i)),
            DataType::Float32 => Value::Float(a.as_primitive::<Float32Type>().value(i) as f64),
            DataType::Float64 => Value::Float(a.as_primitive::<Float64Type>().value(i)),
            DataType::Decimal128(_, _) => {
                Value::Decimal(a.as_primitive::<Decimal128Type>().value_as_string(i))
            }
            DataType::Utf8 => Value::Text(a.as_string::<i32>().value(i).to_string()),
            DataType::LargeUtf8 => Value::Text(a.as_string::<i64>().value(i).to_string()),
            DataType::Utf8View => Value::Text(a.as_string_view().value(i).to_string()),
            DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
            DataType::Date32 => Value::Date(
                NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")
                    + chrono::Days::new(0)
                    + chrono::Duration::days(a.as_primitive::<Date32Type>().value(i) as i64),
            ),
            DataType::Time32(TimeUnit::Second) => {
                time(a.as_primitive::<Time32SecondType>().value(i) as i64 * 1_000_000_000)?
            }
            DataType::Time32(_) => {
                time(a.as_primitive::<Time32MillisecondType>().value(i) as i64 * 1_000_000)?
            }
            DataType::Time64(TimeUnit::Microsecond) => {
                time(a.as_primitive::<Time64MicrosecondType>().value(i) * 1_000)?
            }
            DataType::Time64(_) => time(a.as_primitive::<Time64NanosecondType>().value(i))?,
            DataType::Timestamp(unit, tz) => ts(timestamp_at(a, *unit, i), tz.is_some())?,
            DataType::Date64 => {
                let ms = a.as_primitive::<Date64Type>().value(i);
                let at = chrono::DateTime::from_timestamp_millis(ms).map(|t| t.naive_utc());
                match at {
                    // A date, as Date64 is meant to hold; a time of day is kept.
                    Some(at) if ms.rem_euclid(86_400_000) == 0 => Value::Date(at.date()),
                    at => ts(at, false)?,
                }
            }
            DataType::Float16 => Value::Float(a.as_primitive::<Float16Type>().value(i).to_f64()),
            DataType::Decimal256(_, _) => {
                Value::Decimal(a.as_primitive::<Decimal256Type>().value_as_string(i))
            }
            DataType::Binary => Value::Bytes(a.as_binary::<i32>().value(i).to_vec()),
            DataType::LargeBinary => Value::Bytes(a.as_binary::<i64>().value(i).to_vec()),
            DataType::BinaryView => Value::Bytes(a.as_binary_view().value(i).to_vec()),
            DataType::FixedSizeBinary(_) => {
                Value::Bytes(a.as_fixed_size_binary().value(i).to_vec())
            }
            DataType::Duration(_) | DataType::Interval(_) => Value::Text(
                arrow::util::display::array_value_to_string(a, i).map_err(|e| e.to_string())?,
            ),
            DataType::Dictionary(_, values) => {
                let one =
                    arrow::compute::cast(&a.slice(i, 1), values).map_err(|e| e.to_string())?;
                return Value::from_array(one.as_ref(), 0);
            }
            other => return Err(format!("type {other} cannot be applied")),
        })
    }

    /// The value as JSON for PostgreSQL's `json_populate_record`, which converts it to
    /// the column's type.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Int(v) => J::from(*v),
            Value::UInt(v) => J::from(*v),
            Value::Float(v) if v.is_finite() => J::from(*v),
            Value::Float(v) if v.is_nan() => J::from("NaN"),
            Value::Float(v) => J::from(if *v > 0.0 { "Infinity" } else { "-Infinity" }),
            Value::Decimal(s) | Value::Text(s) => J::from(s.as_str()),
            Value::Bool(b) => J::from(*b),
            Value::Date(d) => J::from(d.to_string()),
            Value::Timestamp { at, utc } => J::from(if *utc {
                let fmt = fraction("%Y-%m-%dT%H:%M:%S", at.nanosecond());
                format!("{}Z", at.format(&fmt))
            } else {
                let fmt = fraction("%Y-%m-%dT%H:%M:%S", at.nanosecond());
                at.format(&fmt).to_string()
            }),
            Value::Time(t) => {
                let fmt = fraction("%H:%M:%S", t.nanosecond());
                J::from(t.format(&fmt).to_string())
            }
            Value::Bytes(b) => J::from(format!("\\x{}", hex::encode(b))),
        }
    }

    /// Appends the value as JSON text, exactly as [`Self::to_json`] would print it,
    /// without building a JSON tree (the events files hold one per cell).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let text = |out: &mut Vec<u8>, s: &str| {
            serde_json::to_writer(&mut *out, s).expect("writing to memory");
        };
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Int(v) => {
                let _ = write!(out, "{v}");
            }
            Value::UInt(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Float(v) if v.is_finite() => {
                serde_json::to_writer(&mut *out, v).expect("writing to memory")
            }
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Decimal(s) | Value::Text(s) => text(out, s),
            Value::Timestamp { at, utc } if (0..=9999).contains(&at.year()) => {
                let _ = write!(
                    out,
                    "\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
                    at.year(),
                    at.month(),
                    at.day(),
                    at.hour(),
                    at.minute(),
                    at.second(),
                );
                write_fraction(out, at.nanosecond());
                if *utc {
                    out.push(b'Z');
                }
                out.push(b'"');
            }
            other => serde_json::to_writer(&mut *out, &other.to_json()).expect("writing to memory"),
        }
    }

    /// The value bound as a MySQL parameter (the session runs in UTC).
    pub fn to_mysql(&self) -> mysql_async::Value {
        use mysql_async::Value as M;
        match self {
            Value::Null => M::NULL,
            Value::Int(v) => M::Int(*v),
            Value::UInt(v) => M::UInt(*v),
            Value::Float(v) => M::Double(*v),
            Value::Decimal(s) | Value::Text(s) => M::Bytes(s.clone().into_bytes()),
            Value::Bool(b) => M::Int(*b as i64),
            Value::Date(d) => M::Date(d.year() as u16, d.month() as u8, d.day() as u8, 0, 0, 0, 0),
            Value::Timestamp { at, .. } => M::Date(
                at.year() as u16,
                at.month() as u8,
                at.day() as u8,
                at.hour() as u8,
                at.minute() as u8,
                at.second() as u8,
                at.nanosecond() / 1000,
            ),
            Value::Time(t) => M::Time(
                false,
                0,
                t.hour() as u8,
                t.minute() as u8,
                t.second() as u8,
                t.nanosecond() / 1000,
            ),
            Value::Bytes(b) => M::Bytes(b.clone()),
        }
    }

    /// A short rendering for dry-run output and reports.
    pub fn display(&self) -> String {
        match self {
            Value::Null => "NULL".into(),
            other => match other.to_json() {
                serde_json::Value::String(s) => format!("'{s}'"),
                v => v.to_string(),
            },
        }
    }
}

/// How [`write_cell_json`] renders one column, resolved once per column.
#[derive(Debug, Clone, Copy)]
pub enum CellKind {
    Int,
    UInt,
    Text,
    Bool,
    Date,
    /// A timestamp; `true` when the column is zoned.
    Timestamp(bool),
    /// Every other type, through [`Value`].
    Other,
}

impl CellKind {
    pub fn of(t: &DataType) -> Self {
        match t {
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => CellKind::Int,
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
                CellKind::UInt
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => CellKind::Text,
            DataType::Boolean => CellKind::Bool,
            DataType::Date32 => CellKind::Date,
            DataType::Timestamp(_, tz) => CellKind::Timestamp(tz.is_some()),
            _ => CellKind::Other,
        }
    }
}

/// Appends row `i` of `a` (of kind `kind`, see [`CellKind::of`]) as JSON text, exactly
/// as `Value::from_array(a, i)?.write_json(out)` would, without building the value:
/// the events files hold one per cell, hundreds of thousands of rows a run.
pub fn write_cell_json(
    a: &dyn Array,
    kind: CellKind,
    i: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if a.is_null(i) {
        out.extend_from_slice(b"null");
        return Ok(());
    }
    match (kind, a.data_type()) {
        (CellKind::Int, DataType::Int64) => write_i64(out, a.as_primitive::<Int64Type>().value(i)),
        (CellKind::Int, DataType::Int32) => {
            write_i64(out, a.as_primitive::<Int32Type>().value(i).into())
        }
        (CellKind::UInt, DataType::UInt64) => {
            write_u64(out, a.as_primitive::<UInt64Type>().value(i))
        }
        (CellKind::Text, DataType::Utf8View) => {
            super::encode::json_string(out, a.as_string_view().value(i))
        }
        (CellKind::Text, DataType::Utf8) => {
            super::encode::json_string(out, a.as_string::<i32>().value(i))
        }
        (CellKind::Bool, _) => out.extend_from_slice(if a.as_boolean().value(i) {
            b"true"
        } else {
            b"false"
        }),
        (CellKind::Date, _) => {
            let days = a.as_primitive::<Date32Type>().value(i);
            match chrono::DateTime::from_timestamp(i64::from(days) * 86_400, 0) {
                Some(d) if (0..=9999).contains(&d.year()) => {
                    out.push(b'"');
                    write_date(out, d.year(), d.month(), d.day());
                    out.push(b'"');
                }
                _ => Value::from_array(a, i)?.write_json(out),
            }
        }
        (CellKind::Timestamp(utc), DataType::Timestamp(unit, _)) => {
            match timestamp_at(a, *unit, i) {
                Some(t) if (0..=9999).contains(&t.year()) => {
                    out.push(b'"');
                    write_date(out, t.year(), t.month(), t.day());
                    out.push(b'T');
                    write_digits(out, t.hour(), 2);
                    out.push(b':');
                    write_digits(out, t.minute(), 2);
                    out.push(b':');
                    write_digits(out, t.second(), 2);
                    out.push(b'.');
                    write_fraction(out, t.nanosecond());
                    if utc {
                        out.push(b'Z');
                    }
                    out.push(b'"');
                }
                _ => Value::from_array(a, i)?.write_json(out),
            }
        }
        _ => Value::from_array(a, i)?.write_json(out),
    }
    Ok(())
}

/// Row `i` of the timestamp array `a` (of unit `unit`), exactly; `None` out of
/// chrono's range.
fn timestamp_at(a: &dyn Array, unit: TimeUnit, i: usize) -> Option<NaiveDateTime> {
    let at = match unit {
        TimeUnit::Second => {
            chrono::DateTime::from_timestamp(a.as_primitive::<TimestampSecondType>().value(i), 0)
        }
        TimeUnit::Millisecond => chrono::DateTime::from_timestamp_millis(
            a.as_primitive::<TimestampMillisecondType>().value(i),
        ),
        TimeUnit::Microsecond => chrono::DateTime::from_timestamp_micros(
            a.as_primitive::<TimestampMicrosecondType>().value(i),
        ),
        TimeUnit::Nanosecond => Some(chrono::DateTime::from_timestamp_nanos(
            a.as_primitive::<TimestampNanosecondType>().value(i),
        )),
    };
    at.map(|t| t.naive_utc())
}

/// A chrono format of `base` with a fraction of six digits, or nine when `nanos` has
/// a part finer than a microsecond: no value is rounded.
fn fraction(base: &str, nanos: u32) -> String {
    if nanos.is_multiple_of(1000) {
        format!("{base}%.6f")
    } else {
        format!("{base}%.9f")
    }
}

/// Appends the fraction of a second: six digits, or nine when finer than a microsecond.
fn write_fraction(out: &mut Vec<u8>, nanos: u32) {
    let nanos = nanos % 1_000_000_000;
    if nanos.is_multiple_of(1000) {
        write_digits(out, nanos / 1000, 6);
    } else {
        write_digits(out, nanos, 9);
    }
}

fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(out, v.unsigned_abs());
}

/// `v` in exactly `width` digits, zero-padded (`v` has no more).
fn write_digits(out: &mut Vec<u8>, mut v: u32, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for at in (start..start + width).rev() {
        out[at] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

fn write_date(out: &mut Vec<u8>, year: i32, month: u32, day: u32) {
    write_digits(out, year as u32, 4);
    out.push(b'-');
    write_digits(out, month, 2);
    out.push(b'-');
    write_digits(out, day, 2);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_render_as_their_values_do() {
        use arrow::array::{
            ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int8Array,
            Int32Array, Int64Array, StringArray, StringViewArray, TimestampMicrosecondArray,
            TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray, UInt64Array,
        };
        use std::sync::Arc;
        let far = 3_000_000i64; // days: past the year 9999
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![
                Some(0),
                Some(-1),
                Some(i64::MIN),
                Some(i64::MAX),
                None,
            ])),
            Arc::new(Int32Array::from(vec![Some(7), Some(i32::MIN), None])),
            Arc::new(Int8Array::from(vec![Some(-8), None])),
            Arc::new(UInt64Array::from(vec![Some(0), Some(u64::MAX), None])),
            Arc::new(Float64Array::from(vec![Some(-0.5), Some(f64::NAN), None])),
            Arc::new(StringArray::from(vec![
                Some("a \"b\" \\ é\n"),
                Some(""),
                None,
            ])),
            Arc::new(StringViewArray::from(vec![
                Some("a longer text than twelve bytes"),
                None,
            ])),
            Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
            Arc::new(Date32Array::from(vec![
                Some(0),
                Some(-719_529),
                Some(19_782),
                Some(far as i32),
                None,
            ])),
            Arc::new(
                Decimal128Array::from(vec![Some(-1250), None])
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
            Arc::new(TimestampSecondArray::from(vec![
                Some(-1),
                Some(1_700_000_000),
                Some(far * 86_400),
                None,
            ])),
            Arc::new(
                TimestampMillisecondArray::from(vec![Some(-1), Some(1_700_000_000_123)])
                    .with_timezone("UTC"),
            ),
            Arc::new(TimestampMicrosecondArray::from(vec![
                Some(-1),
                Some(1_700_000_000_123_456),
                Some(-62_135_596_800_000_000 - 1),
            ])),
            Arc::new(
                TimestampNanosecondArray::from(vec![Some(-1_500), Some(1_700_000_000_123_456_789)])
                    .with_timezone("+00:00"),
            ),
        ];
        for a in &columns {
            let kind = CellKind::of(a.data_type());
            for i in 0..a.len() {
                let (mut fast, mut slow) = (Vec::new(), Vec::new());
                write_cell_json(a.as_ref(), kind, i, &mut fast).unwrap();
                Value::from_array(a.as_ref(), i)
                    .unwrap()
                    .write_json(&mut slow);
                assert_eq!(
                    String::from_utf8(fast).unwrap(),
                    String::from_utf8(slow).unwrap(),
                    "{} row {i}",
                    a.data_type()
                );
            }
        }
    }

    #[test]
    fn json_text_matches_the_json_tree() {
        let at = NaiveDate::from_ymd_opt(2024, 6, 1)
            .unwrap()
            .and_hms_micro_opt(1, 2, 3, 45)
            .unwrap();
        let values = [
            Value::Null,
            Value::Int(-42),
            Value::UInt(u64::MAX),
            Value::Float(1.0),
            Value::Float(-0.1),
            Value::Float(f64::NAN),
            Value::Float(f64::NEG_INFINITY),
            Value::Decimal("-12.50".into()),
            Value::Text("quote \" and \\ and \n and é".into()),
            Value::Bool(true),
            Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
            Value::Timestamp { at, utc: true },
            Value::Timestamp { at, utc: false },
            Value::Time(NaiveTime::from_hms_micro_opt(23, 59, 58, 7).unwrap()),
            Value::Bytes(vec![0, 255]),
        ];
        for v in values {
            let mut out = Vec::new();
            v.write_json(&mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                v.to_json().to_string(),
                "{v:?}"
            );
        }
    }
}
