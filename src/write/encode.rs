//! The output's encoders, one owner for each: correction ids, keys as canonical JSON,
//! values as canonical text, JSON strings, and run dates as days. The diff writes with them and the events and apply stages read with them, so a
//! value looks the same in every file recon writes.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use chrono::NaiveDate;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::write::vocabulary::Op;

/// Deterministic correction id: the same discrepancy gives the same id on every rerun.
/// A SHA-256 over the canonical JSON of job, entity, system, op, key and, for updates,
/// each changed field with both values; the first 128 bits in hex. The JSON is the
/// compact text of `[job, entity, system, op, key, [[field, source, replica], …]]`,
/// written directly: a run can have millions of corrections.
pub fn correction_id(
    job: &str,
    entity: &str,
    system: &str,
    op: Op,
    key: &str,
    fields: &[(&str, Option<&str>, Option<&str>)],
) -> String {
    let mut text = Vec::with_capacity(64 + key.len() + 48 * fields.len());
    text.push(b'[');
    for s in [job, entity, system, op.as_str(), key] {
        json_string(&mut text, s);
        text.push(b',');
    }
    text.push(b'[');
    for (i, (name, source, replica)) in fields.iter().enumerate() {
        if i > 0 {
            text.push(b',');
        }
        text.push(b'[');
        json_string(&mut text, name);
        for v in [source, replica] {
            text.push(b',');
            match v {
                Some(v) => json_string(&mut text, v),
                None => text.extend_from_slice(b"null"),
            }
        }
        text.push(b']');
    }
    text.extend_from_slice(b"]]");
    hex::encode(&Sha256::digest(&text)[..16])
}

/// Appends `s` as a JSON string.
pub(crate) fn json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to memory");
}

/// A key column read for JSON rendering.
pub(crate) enum KeyColumn {
    Int(ArrayRef),
    /// An exact number beyond Int64 (UInt64, decimals): its digits, unquoted.
    Number(StringArray),
    Text(ArrayRef),
    Bool(ArrayRef),
    Other(StringArray),
}

impl KeyColumn {
    fn new(a: &ArrayRef) -> Result<Self> {
        let t = a.data_type();
        Ok(if t.is_integer() && *t != DataType::UInt64 {
            KeyColumn::Int(cast(a, &DataType::Int64).map_err(|e| Error::bug("an integer key", e))?)
        } else if matches!(
            t,
            DataType::UInt64 | DataType::Decimal128(..) | DataType::Decimal256(..)
        ) {
            KeyColumn::Number(canonical_text(a)?)
        } else if matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
            KeyColumn::Text(cast(a, &DataType::Utf8).map_err(|e| Error::bug("a text key", e))?)
        } else if *t == DataType::Boolean {
            KeyColumn::Bool(Arc::clone(a))
        } else {
            KeyColumn::Other(canonical_text(a)?)
        })
    }

    /// Appends the value in `row` as JSON.
    fn write_json(&self, row: usize, out: &mut Vec<u8>) {
        use std::io::Write;
        match self {
            KeyColumn::Int(a) if a.is_valid(row) => {
                write!(out, "{}", a.as_primitive::<Int64Type>().value(row)).expect("in memory")
            }
            KeyColumn::Text(a) if a.is_valid(row) => {
                json_string(out, a.as_string::<i32>().value(row))
            }
            KeyColumn::Bool(a) if a.is_valid(row) => {
                out.extend_from_slice(if a.as_boolean().value(row) {
                    b"true"
                } else {
                    b"false"
                })
            }
            KeyColumn::Number(a) if a.is_valid(row) => {
                out.extend_from_slice(a.value(row).as_bytes())
            }
            KeyColumn::Other(a) if a.is_valid(row) => json_string(out, a.value(row)),
            _ => out.extend_from_slice(b"null"),
        }
    }
}

/// Renders keys as canonical JSON: an object with the key columns (source names) sorted
/// by name. Strings are JSON strings, so no two distinct keys ever render the same.
pub(crate) struct KeyJson {
    /// `"name":` and the column, sorted by name.
    columns: Vec<(Vec<u8>, KeyColumn)>,
}

impl KeyJson {
    /// `columns`: each key column's name (source names) and values, in any order.
    pub(crate) fn new<'n, 'b>(
        columns: impl Iterator<Item = (&'n str, &'b ArrayRef)>,
    ) -> Result<Self> {
        let mut columns = columns
            .map(|(name, a)| Ok((name, KeyColumn::new(a)?)))
            .collect::<Result<Vec<_>>>()?;
        columns.sort_by(|a, b| a.0.cmp(b.0));
        let columns = columns
            .into_iter()
            .map(|(name, column)| {
                let mut prefix = Vec::new();
                json_string(&mut prefix, name);
                prefix.push(b':');
                (prefix, column)
            })
            .collect();
        Ok(KeyJson { columns })
    }

    pub(crate) fn json(&self, row: usize) -> String {
        let mut out = Vec::with_capacity(32);
        out.push(b'{');
        for (i, (prefix, column)) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(prefix);
            column.write_json(row, &mut out);
        }
        out.push(b'}');
        String::from_utf8(out).expect("JSON is UTF-8")
    }
}

/// Canonical text of values: Arrow's text form, binary as hex, timestamps ISO 8601.
pub fn canonical_text(a: &ArrayRef) -> Result<StringArray> {
    let err = |e: arrow::error::ArrowError| {
        Error::Internal(format!("rendering {} as text: {e}", a.data_type()))
    };
    match a.data_type() {
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => {
            let b = cast(a, &DataType::Binary).map_err(err)?;
            let b = b.as_binary::<i32>();
            Ok(b.iter().map(|v| v.map(hex::encode)).collect())
        }
        DataType::Date64 => {
            // A date, as Date64 is meant to hold; a time of day, when there is one, kept.
            let t = cast(a, &DataType::Utf8).map_err(err)?;
            let days = a.as_primitive::<arrow::datatypes::Date64Type>();
            Ok(t.as_string::<i32>()
                .iter()
                .zip(days.iter())
                .map(|(text, ms)| match (text, ms) {
                    (Some(text), Some(ms)) if ms.rem_euclid(86_400_000) == 0 => Some(
                        text.split_once('T')
                            .map_or(text, |(day, _)| day)
                            .to_string(),
                    ),
                    (text, _) => text.map(str::to_string),
                })
                .collect())
        }
        _ => {
            let t = cast(a, &DataType::Utf8).map_err(err)?;
            Ok(t.as_string::<i32>().clone())
        }
    }
}

/// Days since 1970-01-01, as Date32 holds a date.
pub fn days_since_epoch(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Int32Array};

    /// The correction id as the JSON tree gives it: what the direct text must match, or
    /// ids would change between releases.
    fn id_from_tree(
        job: &str,
        entity: &str,
        system: &str,
        op: Op,
        key: &str,
        fields: &[(&str, Option<&str>, Option<&str>)],
    ) -> String {
        let value = serde_json::json!([job, entity, system, op.as_str(), key, fields]);
        hex::encode(&Sha256::digest(value.to_string().as_bytes())[..16])
    }

    #[test]
    fn correction_ids_match_the_json_tree() {
        let key = r#"{"id":7,"région":"é\"\\\n"}"#;
        type Changed<'a> = (&'a str, Option<&'a str>, Option<&'a str>);
        let cases: Vec<Vec<Changed>> = vec![
            vec![],
            vec![("name", Some("Ann"), None)],
            vec![
                ("a\tb", None, Some("x\u{1}y")),
                ("c", Some(""), Some("1.50")),
            ],
        ];
        for fields in &cases {
            for op in [Op::Insert, Op::Update, Op::Delete, Op::SoftDelete] {
                assert_eq!(
                    correction_id("job \"j\"", "orders", "crm", op, key, fields),
                    id_from_tree("job \"j\"", "orders", "crm", op, key, fields)
                );
            }
        }
        // A fixed value: the ids of earlier releases stay the ids of this one.
        assert_eq!(
            correction_id(
                "j",
                "e",
                "s",
                Op::Update,
                r#"{"id":1}"#,
                &[("f", Some("1"), None)]
            ),
            "10321a2103268c5879e935b83b9c01e7"
        );
    }

    #[test]
    fn key_json_sorts_columns_by_name_and_renders_json_values() {
        let names = ["zone", "id", "flag"];
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some("n\"orth"), None])),
            Arc::new(Int32Array::from(vec![Some(-3), Some(5)])),
            Arc::new(BooleanArray::from(vec![Some(true), None])),
        ];
        let json = KeyJson::new(names.into_iter().zip(&arrays)).unwrap();
        assert_eq!(json.json(0), r#"{"flag":true,"id":-3,"zone":"n\"orth"}"#);
        assert_eq!(json.json(1), r#"{"flag":null,"id":5,"zone":null}"#);
        // The same text as a JSON tree (a sorted map) gives.
        let tree = serde_json::json!({"zone": "n\"orth", "id": -3, "flag": true});
        assert_eq!(json.json(0), tree.to_string());
    }
}
