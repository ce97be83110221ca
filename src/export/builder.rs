//! Typed Arrow column builders the exporters append decoded values to, one batch at a time.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Microseconds between 1970-01-01 and 2000-01-01 (the Postgres epoch).
pub const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between 1970-01-01 and 2000-01-01.
pub const PG_EPOCH_DAYS: i32 = 10_957;

/// One column's builder; the variant fixes the Arrow type.
pub enum ColumnBuilder {
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    UInt64(UInt64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Decimal(Decimal128Builder, u8, i8),
    Date32(Date32Builder),
    Time64(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder, Option<Arc<str>>),
}

impl ColumnBuilder {
    /// A builder for `data_type`, or `None` when the exporters cannot produce that type.
    pub fn new(data_type: &DataType, capacity: usize) -> Option<Self> {
        Some(match data_type {
            DataType::Int16 => ColumnBuilder::Int16(Int16Builder::with_capacity(capacity)),
            DataType::Int32 => ColumnBuilder::Int32(Int32Builder::with_capacity(capacity)),
            DataType::Int64 => ColumnBuilder::Int64(Int64Builder::with_capacity(capacity)),
            DataType::UInt64 => ColumnBuilder::UInt64(UInt64Builder::with_capacity(capacity)),
            DataType::Float32 => ColumnBuilder::Float32(Float32Builder::with_capacity(capacity)),
            DataType::Float64 => ColumnBuilder::Float64(Float64Builder::with_capacity(capacity)),
            DataType::Boolean => ColumnBuilder::Boolean(BooleanBuilder::with_capacity(capacity)),
            DataType::Utf8 => ColumnBuilder::Utf8(StringBuilder::with_capacity(capacity, 0)),
            DataType::Binary => ColumnBuilder::Binary(BinaryBuilder::with_capacity(capacity, 0)),
            DataType::Decimal128(p, s) => {
                ColumnBuilder::Decimal(Decimal128Builder::with_capacity(capacity), *p, *s)
            }
            DataType::Date32 => ColumnBuilder::Date32(Date32Builder::with_capacity(capacity)),
            DataType::Time64(TimeUnit::Microsecond) => {
                ColumnBuilder::Time64(Time64MicrosecondBuilder::with_capacity(capacity))
            }
            DataType::Timestamp(TimeUnit::Microsecond, tz) => ColumnBuilder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity),
                tz.clone(),
            ),
            _ => return None,
        })
    }

    pub fn append_null(&mut self) {
        match self {
            ColumnBuilder::Int16(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::UInt64(b) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Boolean(b) => b.append_null(),
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
            ColumnBuilder::Decimal(b, ..) => b.append_null(),
            ColumnBuilder::Date32(b) => b.append_null(),
            ColumnBuilder::Time64(b) => b.append_null(),
            ColumnBuilder::Timestamp(b, _) => b.append_null(),
        }
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Int16(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::UInt64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Boolean(b) => Arc::new(b.finish()),
            ColumnBuilder::Utf8(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .expect("precision and scale were checked when the column was mapped"),
            ),
            ColumnBuilder::Date32(b) => Arc::new(b.finish()),
            ColumnBuilder::Time64(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b, tz) => Arc::new(b.finish().with_timezone_opt(tz.clone())),
        }
    }

    /// Appends text as this column's type (the MySQL text protocol, CSV-like sources).
    pub fn append_text(&mut self, text: &str) -> Result<(), String> {
        match self {
            ColumnBuilder::Int16(b) => b.append_value(parse_int(text)?),
            ColumnBuilder::Int32(b) => b.append_value(parse_int(text)?),
            ColumnBuilder::Int64(b) => b.append_value(parse_int(text)?),
            ColumnBuilder::UInt64(b) => b.append_value(parse_int(text)?),
            ColumnBuilder::Float32(b) => b.append_value(
                text.trim()
                    .parse()
                    .map_err(|_| format!("`{text}` is not a number"))?,
            ),
            ColumnBuilder::Float64(b) => b.append_value(
                text.trim()
                    .parse()
                    .map_err(|_| format!("`{text}` is not a number"))?,
            ),
            ColumnBuilder::Boolean(b) => b.append_value(match text.trim() {
                "1" | "true" | "TRUE" | "t" => true,
                "0" | "false" | "FALSE" | "f" => false,
                other => return Err(format!("`{other}` is not a boolean")),
            }),
            ColumnBuilder::Utf8(b) => b.append_value(text),
            ColumnBuilder::Binary(b) => b.append_value(text.as_bytes()),
            ColumnBuilder::Decimal(b, p, s) => b.append_value(parse_decimal(text, *p, *s)?),
            ColumnBuilder::Date32(b) => b.append_value(parse_date(text)?),
            ColumnBuilder::Time64(b) => b.append_value(parse_time(text)?),
            ColumnBuilder::Timestamp(b, tz) => b.append_value(parse_timestamp(text, tz.is_some())?),
        }
        Ok(())
    }
}

fn parse_int<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{text}` is not an integer of the column's width"))
}

/// Parses a plain decimal (`-12.5`, `3`, `1e3` is refused) to an unscaled value at `scale`.
/// More fractional digits than the scale is an error, never a rounding.
pub fn parse_decimal(text: &str, precision: u8, scale: i8) -> Result<i128, String> {
    let t = text.trim();
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let bad = || format!("`{text}` is not a decimal");
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let scale = scale.max(0) as usize;
    let frac_trimmed = frac.trim_end_matches('0');
    if frac_trimmed.len() > scale {
        return Err(format!(
            "`{text}` has more than {scale} decimal places (decimal({precision},{scale}))"
        ));
    }
    let mut v: i128 = 0;
    let digits = int.bytes().chain(
        frac_trimmed
            .bytes()
            .chain(std::iter::repeat_n(b'0', scale - frac_trimmed.len())),
    );
    for d in digits {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add((d - b'0') as i128))
            .ok_or_else(|| format!("`{text}` does not fit decimal({precision},{scale})"))?;
    }
    if v >= 10i128.pow(precision as u32) {
        return Err(format!(
            "`{text}` does not fit decimal({precision},{scale})"
        ));
    }
    Ok(if neg { -v } else { v })
}

pub fn parse_date(text: &str) -> Result<i32, String> {
    let d = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| format!("`{text}` is not a date (YYYY-MM-DD)"))?;
    Ok(
        d.signed_duration_since(chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch"))
            .num_days() as i32,
    )
}

fn parse_time(text: &str) -> Result<i64, String> {
    let t = chrono::NaiveTime::parse_from_str(text.trim(), "%H:%M:%S%.f")
        .map_err(|_| format!("`{text}` is not a time of day (HH:MM:SS)"))?;
    Ok(t.signed_duration_since(chrono::NaiveTime::MIN)
        .num_microseconds()
        .expect("a day fits"))
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` (or with `T`), with an optional offset or `Z`, which
/// is applied; a value without one is taken as UTC for a UTC column.
pub fn parse_timestamp(text: &str, _utc: bool) -> Result<i64, String> {
    let t = text.trim();
    let micros = if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(t) {
        dt.timestamp_micros()
    } else if let Ok(dt) = chrono::DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z") {
        dt.timestamp_micros()
    } else {
        let naive = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f")
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f"))
            .or_else(|_| {
                chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
                    .map(|d| d.and_time(chrono::NaiveTime::MIN))
            })
            .map_err(|_| format!("`{text}` is not a timestamp (YYYY-MM-DD HH:MM:SS[.ffffff])"))?;
        naive.and_utc().timestamp_micros()
    };
    Ok(micros)
}

/// The batch being filled: one builder per column.
pub struct BatchBuilder {
    pub schema: SchemaRef,
    pub columns: Vec<ColumnBuilder>,
    pub rows: usize,
    capacity: usize,
}

impl BatchBuilder {
    /// Fails with the first column whose type has no builder.
    pub fn try_new(schema: SchemaRef, capacity: usize) -> Result<Self, String> {
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                ColumnBuilder::new(f.data_type(), capacity).ok_or_else(|| {
                    format!(
                        "column `{}`: type {} cannot be exported",
                        f.name(),
                        f.data_type()
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BatchBuilder {
            schema,
            columns,
            rows: 0,
            capacity,
        })
    }

    pub fn is_full(&self) -> bool {
        self.rows >= self.capacity
    }

    pub fn finish(&mut self) -> RecordBatch {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(|c| c.finish()).collect();
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
            .expect("every builder got one value per row")
    }
}

/// A nullable schema from (name, type) pairs: exports never assert non-nullness.
pub fn schema_of(columns: impl IntoIterator<Item = (String, DataType)>) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .into_iter()
            .map(|(n, t)| Field::new(n, t, true))
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(parse_decimal("12.5", 10, 2), Ok(1250));
        assert_eq!(parse_decimal("-0.01", 10, 2), Ok(-1));
        assert_eq!(parse_decimal("7", 10, 0), Ok(7));
        assert_eq!(parse_decimal("1.230", 10, 2), Ok(123));
        assert!(
            parse_decimal("1.234", 10, 2)
                .unwrap_err()
                .contains("decimal places")
        );
        assert!(
            parse_decimal("1000", 3, 0)
                .unwrap_err()
                .contains("does not fit")
        );
        assert!(parse_decimal("1e3", 10, 0).is_err());
    }

    #[test]
    fn timestamps_apply_offsets() {
        let utc = parse_timestamp("2024-06-01T10:00:00Z", true).unwrap();
        assert_eq!(
            parse_timestamp("2024-06-01 12:00:00+02:00", true).unwrap(),
            utc
        );
        assert_eq!(parse_timestamp("2024-06-01 10:00:00", true).unwrap(), utc);
        assert_eq!(
            parse_timestamp("2024-06-01 10:00:00.5", true).unwrap(),
            utc + 500_000
        );
    }
}
