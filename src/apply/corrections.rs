//! Correction files as apply reads them: each row a [`Correction`], its op parsed into
//! [`Op`] here, once; a row whose op is not one of the contract's words stops the apply
//! with an error naming the file.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::errors::ParquetError;

use super::{Correction, Value};
use crate::error::{Error, Result};
use crate::store;
use crate::write::vocabulary::Op;

/// Reads one correction file (small: the guardrail caps corrections at a share of rows).
pub(crate) async fn read_corrections(
    output: &store::Location,
    rel: &str,
) -> Result<Vec<Correction>> {
    let mut out = Vec::new();
    for batch in CorrectionBatches::open(output, rel).await? {
        out.extend(batch?);
    }
    Ok(out)
}

/// One correction file, read batch by batch.
pub(crate) struct CorrectionBatches {
    url: String,
    reader: ParquetRecordBatchReader,
}

impl CorrectionBatches {
    pub(crate) async fn open(output: &store::Location, rel: &str) -> Result<Self> {
        let location = output.child(rel);
        let storage = |source| Error::Storage {
            location: location.url(),
            source,
        };
        let bytes = location
            .store
            .get(&location.prefix)
            .await
            .map_err(storage)?
            .bytes()
            .await
            .map_err(storage)?;
        let unreadable = |e: ParquetError| Error::UnreadableFile {
            path: location.url(),
            message: e.to_string(),
            source: Box::new(e),
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(unreadable)?
            .build()
            .map_err(unreadable)?;
        Ok(CorrectionBatches {
            url: location.url(),
            reader,
        })
    }

    /// The corrections of one batch read from the file at `url`.
    pub(crate) fn corrections(url: &str, b: &RecordBatch) -> Result<Vec<Correction>> {
        let bad = |message: String| Error::BadFile {
            path: url.to_string(),
            message,
        };
        let mut out = Vec::with_capacity(b.num_rows());
        let schema = b.schema();
        let col = |n: &str| {
            b.column_by_name(n)
                .ok_or_else(|| bad(format!("no column `{n}`")))
        };
        // A file recon did not write may hold other types: an error naming the column,
        // never a panic.
        let typed =
            |n: &str, want: &str, t: &DataType| bad(format!("column `{n}` is {t}, not {want}"));
        let text = |n: &str| {
            let a = col(n)?;
            a.as_string_opt::<i32>()
                .cloned()
                .ok_or_else(|| typed(n, "Utf8", a.data_type()))
        };
        let ids = text("correction_id")?;
        let ops = text("op")?;
        let changed = {
            let a = col("changed_fields")?;
            a.as_list_opt::<i32>()
                .filter(|l| l.value_type() == DataType::Utf8)
                .cloned()
                .ok_or_else(|| typed("changed_fields", "List(Utf8)", a.data_type()))?
        };
        let expected = {
            let a = col("expected")?;
            a.as_struct_opt()
                .cloned()
                .ok_or_else(|| typed("expected", "a struct", a.data_type()))?
        };
        let payload: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| {
                !matches!(
                    schema.field(i).name().as_str(),
                    "correction_id" | "op" | "changed_fields" | "expected"
                )
            })
            .collect();
        for r in 0..b.num_rows() {
            if ids.is_null(r) || ops.is_null(r) || changed.is_null(r) {
                return Err(bad(format!(
                    "row {r}: correction_id, op and changed_fields must not be NULL"
                )));
            }
            let id = ids.value(r);
            let op = ops
                .value(r)
                .parse::<Op>()
                .map_err(|e| bad(format!("correction {id}: {e}")))?;
            let names = changed.value(r);
            let names = names.as_string::<i32>();
            let values = payload
                .iter()
                .map(|&i| {
                    Ok((
                        schema.field(i).name().clone(),
                        Value::from_array(b.column(i).as_ref(), r).map_err(&bad)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            let exp = if expected.is_null(r) {
                vec![]
            } else {
                expected
                    .fields()
                    .iter()
                    .zip(expected.columns())
                    .map(|(f, a)| {
                        Ok((
                            f.name().clone(),
                            Value::from_array(a.as_ref(), r).map_err(&bad)?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?
            };
            out.push(Correction {
                id: id.to_string(),
                op,
                changed: (0..names.len())
                    .map(|i| names.value(i).to_string())
                    .collect(),
                values,
                expected: exp,
            });
        }
        Ok(out)
    }
}

impl Iterator for CorrectionBatches {
    type Item = Result<Vec<Correction>>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = match self.reader.next()? {
            Ok(b) => b,
            Err(e) => {
                return Some(Err(Error::UnreadableFile {
                    path: self.url.clone(),
                    message: format!("not a readable correction file: {e}"),
                    source: Box::new(e),
                }));
            }
        };
        Some(Self::corrections(&self.url, &batch))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, Int64Array, ListBuilder, StringArray, StringBuilder, StructArray,
    };
    use arrow::datatypes::{DataType, Field, Fields};

    use super::*;
    use crate::error::ExitCode;

    /// A correction file's batch: one correction per op, an `id` payload column.
    fn batch(ops: &[&str]) -> RecordBatch {
        let mut changed = ListBuilder::new(StringBuilder::new());
        for _ in ops {
            changed.values().append_value("id");
            changed.append(true);
        }
        let expected_fields = Fields::from(vec![Field::new("id", DataType::Int64, true)]);
        let expected = StructArray::new_null(expected_fields, ops.len());
        let ids: Vec<String> = (0..ops.len()).map(|i| format!("c{i}")).collect();
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("correction_id", Arc::new(StringArray::from(ids))),
            ("op", Arc::new(StringArray::from(ops.to_vec()))),
            ("changed_fields", Arc::new(changed.finish())),
            ("expected", Arc::new(expected)),
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..ops.len() as i64)),
            ),
        ];
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn ops_are_parsed_once_where_the_file_is_read() {
        let all = ["insert", "update", "delete", "soft_delete"];
        let cs = CorrectionBatches::corrections("mem:///c.parquet", &batch(&all)).unwrap();
        assert_eq!(
            cs.iter().map(|c| c.op).collect::<Vec<_>>(),
            [Op::Insert, Op::Update, Op::Delete, Op::SoftDelete]
        );
        assert_eq!(cs[2].values, [("id".to_string(), Value::Int(2))]);
    }

    #[test]
    fn an_unknown_op_is_bad_input_naming_the_file_and_the_correction() {
        let e = CorrectionBatches::corrections("mem:///c.parquet", &batch(&["insert", "upsert"]))
            .unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::InputData);
        let text = e.to_string();
        for needle in [
            "mem:///c.parquet",
            "correction c1",
            "`upsert`",
            "soft_delete",
        ] {
            assert!(text.contains(needle), "{text}");
        }
    }

    /// A file recon did not write: columns of other types, or NULL where recon never
    /// writes one, are bad input naming the file and the column, never a panic.
    #[test]
    fn columns_of_other_types_or_null_are_bad_input() {
        let good = batch(&["insert", "update"]);
        let swap = |name: &str, array: ArrayRef| {
            let schema = good.schema();
            let columns: Vec<(&str, ArrayRef)> = schema
                .fields()
                .iter()
                .zip(good.columns())
                .map(|(f, c)| {
                    let c = if f.name() == name {
                        Arc::clone(&array)
                    } else {
                        Arc::clone(c)
                    };
                    (f.name().as_str(), c)
                })
                .collect();
            RecordBatch::try_from_iter(columns).unwrap()
        };
        let cases: Vec<(&str, ArrayRef, &str)> = vec![
            (
                "op",
                Arc::new(Int64Array::from(vec![1, 2])),
                "column `op` is Int64",
            ),
            (
                "correction_id",
                Arc::new(Int64Array::from(vec![1, 2])),
                "column `correction_id` is Int64",
            ),
            (
                "changed_fields",
                Arc::new(StringArray::from(vec!["id", "id"])),
                "column `changed_fields` is Utf8",
            ),
            (
                "expected",
                Arc::new(Int64Array::from(vec![1, 2])),
                "column `expected` is Int64",
            ),
            (
                "op",
                Arc::new(StringArray::from(vec![Some("insert"), None])),
                "must not be NULL",
            ),
        ];
        for (name, array, needle) in cases {
            let e =
                CorrectionBatches::corrections("mem:///c.parquet", &swap(name, array)).unwrap_err();
            assert_eq!(e.exit_code(), ExitCode::InputData, "{e}");
            let text = e.to_string();
            assert!(
                text.contains("mem:///c.parquet") && text.contains(needle),
                "{text}"
            );
        }
    }
}
