//! The apply report: one row per correction with its outcome, written as Parquet under
//! `applies/` next to the run it applied.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::Utc;

use super::{ApplySummary, LogEntry, Outcome};
use crate::error::{Error, Result};
use crate::store;
use crate::write::ParquetSink;

pub(crate) async fn write_report(
    output: &store::Location,
    rel: &str,
    summary: &ApplySummary,
    log: &[LogEntry],
) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("apply_id", DataType::Utf8, false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new("system", DataType::Utf8, false),
        Field::new("entity", DataType::Utf8, false),
        Field::new("correction_id", DataType::Utf8, false),
        Field::new("op", DataType::Utf8, false),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let mut cols: Vec<StringBuilder> = (0..8).map(|_| StringBuilder::new()).collect();
    let mut at = TimestampMicrosecondBuilder::new();
    let now = Utc::now().timestamp_micros();
    for LogEntry {
        entity,
        correction_id,
        op,
        outcome,
    } in log
    {
        for (i, v) in [
            summary.apply_id.as_str(),
            summary.run_id.as_str(),
            summary.system.as_str(),
            entity,
            correction_id,
            op.as_str(),
            outcome.as_str(),
        ]
        .into_iter()
        .enumerate()
        {
            cols[i].append_value(v);
        }
        match outcome {
            Outcome::Failed(m) => cols[7].append_value(m),
            _ => cols[7].append_null(),
        }
        at.append_value(now);
    }
    let mut arrays: Vec<Arc<dyn Array>> =
        cols.iter_mut().map(|c| Arc::new(c.finish()) as _).collect();
    arrays.push(Arc::new(at.finish().with_timezone("UTC")));
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| Error::InternalWith {
        context: "apply report".to_string(),
        source: Box::new(e),
    })?;
    let mut sink = ParquetSink::create(output, rel.to_string(), schema, 64 * 1024)?;
    sink.write(&batch).await?;
    sink.close().await?;
    Ok(())
}
