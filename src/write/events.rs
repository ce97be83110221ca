//! Corrections as compensation events, and corrections that come back after an apply.
//!
//! Every committed run also writes its corrections as newline-delimited JSON events in a
//! CloudEvents 1.0 envelope, one file per system and entity:
//! `{output}/events/run_date=D/run_id=R/system=S/entity=E/events.ndjson`. The event id
//! is the correction id (deterministic), so idempotent consumers can deduplicate.
//!
//! The events are rendered from the correction batches as the diff makes them, on the
//! same cores, and streamed to their file alongside the correction file ([`Events`]);
//! like it, the file is listed only in a committed run's manifest, and removed when a
//! guardrail withholds the entity's corrections.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use chrono::{NaiveDate, Utc};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::Receiver;

use super::encode::json_string;
use super::value::{CellKind, write_cell_json};
use super::{Abandoned, Feed, ManifestFile, RunLayout};
use crate::error::{Error, Result};
use crate::job::JobConfig;
use crate::store::Location;

/// What every event of one file shares, rendered once: the JSON after an event's id up
/// to its type, and the JSON after its subject up to its op.
struct EventParts {
    /// `,"source":"recon/JOB","type":`
    after_id: Vec<u8>,
    /// `,"time":…,"datacontenttype":…,"reconrunid":…,"reconrundate":…,"reconsystem":…,`
    /// then `"data":{"entity":…,"op":`
    after_subject: Vec<u8>,
}

impl EventParts {
    fn new(
        job: &str,
        run_id: &str,
        run_date: NaiveDate,
        system: &str,
        entity: &str,
        time: &str,
    ) -> Self {
        let mut after_id = b",\"source\":".to_vec();
        json_string(&mut after_id, &format!("recon/{job}"));
        after_id.extend_from_slice(b",\"type\":");
        let mut after_subject = b",\"time\":".to_vec();
        json_string(&mut after_subject, time);
        after_subject
            .extend_from_slice(b",\"datacontenttype\":\"application/json\",\"reconrunid\":");
        json_string(&mut after_subject, run_id);
        after_subject.extend_from_slice(b",\"reconrundate\":");
        json_string(&mut after_subject, &run_date.to_string());
        after_subject.extend_from_slice(b",\"reconsystem\":");
        json_string(&mut after_subject, system);
        after_subject.extend_from_slice(b",\"data\":{\"entity\":");
        json_string(&mut after_subject, entity);
        after_subject.extend_from_slice(b",\"op\":");
        EventParts {
            after_id,
            after_subject,
        }
    }
}

/// One column of a correction batch as the events render it: its name as a JSON
/// string and its values.
struct EventColumn<'a> {
    name: &'a str,
    json_name: Vec<u8>,
    values: &'a dyn Array,
    kind: CellKind,
}

impl<'a> EventColumn<'a> {
    fn new(name: &'a str, values: &'a dyn Array) -> Self {
        let mut json_name = Vec::with_capacity(name.len() + 2);
        json_string(&mut json_name, name);
        EventColumn {
            name,
            json_name,
            values,
            kind: CellKind::of(values.data_type()),
        }
    }
}

/// Writes row `r` of `columns` as a JSON object, in column order.
fn json_object<'c, 'a: 'c>(
    out: &mut Vec<u8>,
    columns: impl Iterator<Item = &'c EventColumn<'a>>,
    r: usize,
) -> std::result::Result<(), String> {
    out.push(b'{');
    for (i, c) in columns.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&c.json_name);
        out.push(b':');
        write_cell_json(c.values, c.kind, r, out)?;
    }
    out.push(b'}');
    Ok(())
}

/// Appends the events of every correction in `batch` (a batch of a correction file),
/// one line of JSON each, rendered from the batch's columns directly: a run can have
/// hundreds of thousands of corrections. Returns the corrections' ids in row order.
fn write_events<'b>(
    parts: &EventParts,
    entity: &str,
    key: &[String],
    batch: &'b RecordBatch,
    out: &mut Vec<u8>,
) -> std::result::Result<Vec<&'b str>, String> {
    let col = |n: &str| {
        batch
            .column_by_name(n)
            .ok_or_else(|| format!("no column `{n}`"))
    };
    let ids = col("correction_id")?
        .as_string_opt::<i32>()
        .ok_or("column `correction_id` is not text")?;
    let ops = col("op")?
        .as_string_opt::<i32>()
        .ok_or("column `op` is not text")?;
    let changed = col("changed_fields")?
        .as_list_opt::<i32>()
        .ok_or("column `changed_fields` is not a list")?;
    let expected = col("expected")?
        .as_struct_opt()
        .ok_or("column `expected` is not a struct")?;
    let schema = batch.schema_ref();
    let payload: Vec<EventColumn> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| {
            !matches!(
                f.name().as_str(),
                "correction_id" | "op" | "changed_fields" | "expected"
            )
        })
        .map(|(f, a)| EventColumn::new(f.name(), a.as_ref()))
        .collect();
    let expected_columns: Vec<EventColumn> = expected
        .fields()
        .iter()
        .zip(expected.columns())
        .map(|(f, a)| EventColumn::new(f.name(), a.as_ref()))
        .collect();
    let key_columns: Vec<&EventColumn> = payload
        .iter()
        .filter(|c| key.iter().any(|k| k == c.name))
        .collect();
    let mut ids_out = Vec::with_capacity(batch.num_rows());
    let (mut key_json, mut text) = (Vec::new(), String::new());
    for r in 0..batch.num_rows() {
        let (id, op) = (ids.value(r), ops.value(r));
        key_json.clear();
        json_object(&mut key_json, key_columns.iter().copied(), r)?;
        let key_json = std::str::from_utf8(&key_json).map_err(|e| e.to_string())?;
        out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
        json_string(out, id);
        out.extend_from_slice(&parts.after_id);
        text.clear();
        text.push_str("recon.correction.");
        text.push_str(op);
        json_string(out, &text);
        out.extend_from_slice(b",\"subject\":");
        text.clear();
        text.push_str(entity);
        text.push('/');
        text.push_str(key_json);
        json_string(out, &text);
        out.extend_from_slice(&parts.after_subject);
        json_string(out, op);
        out.extend_from_slice(b",\"key\":");
        out.extend_from_slice(key_json.as_bytes());
        out.extend_from_slice(b",\"set\":");
        match op {
            "insert" => json_object(out, payload.iter(), r)?,
            "delete" => out.extend_from_slice(b"{}"),
            _ => {
                let names = changed.value(r);
                let names = names
                    .as_string_opt::<i32>()
                    .ok_or("column `changed_fields` does not hold text")?;
                json_object(
                    out,
                    payload
                        .iter()
                        .filter(|c| names.iter().any(|n| n == Some(c.name))),
                    r,
                )?
            }
        }
        out.extend_from_slice(b",\"expected\":");
        if expected.is_null(r) {
            out.extend_from_slice(b"{}");
        } else {
            json_object(out, expected_columns.iter(), r)?;
        }
        out.extend_from_slice(b"}}\n");
        ids_out.push(id);
    }
    Ok(ids_out)
}

/// Key columns of `entity` in `system`'s names.
fn target_key(job: &JobConfig, entity: &str, system: &str) -> Vec<String> {
    let Some(e) = job.entity(entity) else {
        return vec![];
    };
    e.key
        .iter()
        .map(|k| {
            if system == job.replica {
                e.rename.get(k).cloned().unwrap_or_else(|| k.clone())
            } else {
                k.clone()
            }
        })
        .collect()
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Reappeared {
    pub correction_id: String,
    pub applied_in_run: String,
    pub applied_run_date: NaiveDate,
}

/// What every events file of a run shares: the job, the run, the time written into
/// each event, and the corrections earlier applies applied (to find those that are
/// back).
pub struct Events {
    job: JobConfig,
    layout: RunLayout,
    time: String,
    applied: Arc<HashMap<String, (String, NaiveDate)>>,
}

impl Events {
    /// Reads the apply reports of the last few run dates before the run's.
    pub async fn load(job: &JobConfig, layout: &RunLayout) -> Result<Self> {
        let applied = applied_before(&layout.output, layout.run_date).await?;
        Ok(Events {
            job: job.clone(),
            layout: layout.clone(),
            time: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            applied: Arc::new(applied),
        })
    }

    /// Renders the events of `system`'s corrections of `entity`.
    pub fn renderer(&self, system: &str, entity: &str) -> EventRenderer {
        EventRenderer {
            parts: EventParts::new(
                &self.job.name,
                &self.layout.run_id,
                self.layout.run_date,
                system,
                entity,
                &self.time,
            ),
            key: target_key(&self.job, entity, system),
            entity: entity.to_string(),
            system: system.to_string(),
            applied: Arc::clone(&self.applied),
        }
    }

    /// A sink for the events file of `system`'s corrections of `entity`.
    pub fn sink(&self, system: &str, entity: &str) -> EventsSink {
        EventsSink::new(
            &self.layout,
            self.layout.events(system, entity),
            entity.to_string(),
            system.to_string(),
        )
    }
}

/// The events of one batch of corrections: the JSON lines, the corrections that an
/// earlier apply already applied, and how many events.
pub struct Rendered {
    pub body: Vec<u8>,
    pub reappeared: Vec<Reappeared>,
    pub events: u64,
}

/// Renders one system's corrections of one entity as events, batch by batch.
pub struct EventRenderer {
    parts: EventParts,
    /// Key columns in the target system's names.
    key: Vec<String>,
    entity: String,
    system: String,
    applied: Arc<HashMap<String, (String, NaiveDate)>>,
}

impl EventRenderer {
    /// The events of `batch`, a batch of corrections as the correction file holds
    /// them.
    pub fn render(&self, batch: &RecordBatch) -> Result<Rendered> {
        let mut body = Vec::with_capacity(batch.num_rows() * 1024);
        let ids =
            write_events(&self.parts, &self.entity, &self.key, batch, &mut body).map_err(|m| {
                Error::Snapshot {
                    entity: self.entity.clone(),
                    system: self.system.clone(),
                    message: format!("its corrections cannot be written as events: {m}"),
                }
            })?;
        let reappeared = ids
            .iter()
            .filter_map(|id| {
                let (run_id, date) = self.applied.get(*id)?;
                Some(Reappeared {
                    correction_id: id.to_string(),
                    applied_in_run: run_id.clone(),
                    applied_run_date: *date,
                })
            })
            .collect();
        Ok(Rendered {
            body,
            reappeared,
            events: ids.len() as u64,
        })
    }
}

/// An events file being streamed to the store by a task of its own (multipart upload
/// underneath). A sink dropped without [`Self::finish`] abandons its upload: the file
/// never appears.
pub struct EventsSink {
    entity: String,
    system: String,
    /// Each body of events, then `None` to complete the upload.
    feed: Feed<Option<Vec<u8>>>,
    rows: u64,
    size: u64,
}

impl EventsSink {
    fn new(layout: &RunLayout, rel: String, entity: String, system: String) -> Self {
        let mut sink = BufWriter::new(Arc::clone(&layout.output.store), layout.path(&rel));
        let url = layout.url(&rel);
        let feed = Feed::spawn(
            rel,
            move |mut queue: Receiver<Option<Vec<u8>>>, abandoned: Abandoned| async move {
                let failed = |e: std::io::Error| Error::Storage {
                    location: url.clone(),
                    source: object_store::Error::Generic {
                        store: "events",
                        source: Box::new(e),
                    },
                };
                while let Some(message) = queue.recv().await {
                    if abandoned.is_set() {
                        break;
                    }
                    match message {
                        Some(body) => {
                            if let Err(e) = sink.write_all(&body).await {
                                let _ = sink.abort().await;
                                return Err(failed(e));
                            }
                        }
                        None => {
                            sink.shutdown().await.map_err(failed)?;
                            return Ok(());
                        }
                    }
                }
                // The sink was dropped unfinished: the upload is aborted, never completed.
                if let Err(e) = sink.abort().await {
                    tracing::warn!("aborting the upload of {url}: {e}");
                }
                Ok(())
            },
        );
        EventsSink {
            entity,
            system,
            feed,
            rows: 0,
            size: 0,
        }
    }

    /// Appends the events `body` of `events` corrections.
    pub async fn write(&mut self, body: Vec<u8>, events: u64) -> Result<()> {
        self.rows += events;
        self.size += body.len() as u64;
        self.feed.send(Some(body)).await
    }

    /// Completes the upload and returns the file's manifest entry.
    pub async fn finish(mut self) -> Result<ManifestFile> {
        self.feed.send(None).await?;
        self.feed.stopped().await?;
        Ok(ManifestFile {
            path: self.feed.rel.clone(),
            kind: "events".into(),
            entity: Some(self.entity.clone()),
            system: Some(self.system.clone()),
            rows: Some(self.rows),
            size: self.size,
        })
    }
}

/// How many earlier run dates' apply reports are read.
const LOOKBACK_DATES: usize = 7;

/// Correction id → (run id, run date) for every correction applied by `recon apply`
/// for one of the last few run dates before `run_date`.
async fn applied_before(
    output: &Location,
    run_date: NaiveDate,
) -> Result<HashMap<String, (String, NaiveDate)>> {
    let applies = output.child("applies");
    let dates = super::earlier_run_dates(output, "applies", run_date).await?;
    let mut out = HashMap::new();
    for date in dates.into_iter().take(LOOKBACK_DATES) {
        let dir = applies.child(&format!("run_date={date}"));
        let reports: Vec<_> = dir.store.list(Some(&dir.prefix)).try_collect().await?;
        for r in reports
            .iter()
            .filter(|r| r.location.as_ref().ends_with(".parquet"))
        {
            let bytes = dir.store.get(&r.location).await?.bytes().await?;
            let Ok(reader) =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .and_then(|b| b.build())
            else {
                continue;
            };
            for batch in reader.flatten() {
                use arrow::array::AsArray;
                let (Some(ids), Some(outcomes), Some(runs)) = (
                    batch.column_by_name("correction_id"),
                    batch.column_by_name("outcome"),
                    batch.column_by_name("run_id"),
                ) else {
                    continue;
                };
                let (ids, outcomes, runs) = (
                    ids.as_string::<i32>(),
                    outcomes.as_string::<i32>(),
                    runs.as_string::<i32>(),
                );
                for i in 0..batch.num_rows() {
                    if outcomes.value(i) == "applied" {
                        out.entry(ids.value(i).to_string())
                            .or_insert_with(|| (runs.value(i).to_string(), date));
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, Int64Array, ListBuilder, StringArray, StringBuilder, StructArray,
    };
    use arrow::buffer::NullBuffer;
    use arrow::datatypes::{DataType, Field};

    use super::*;

    #[test]
    fn events_render_every_op_from_the_batch_columns() {
        let mut changed = ListBuilder::new(StringBuilder::new());
        // One list per row: ["name"], [], [].
        changed.values().append_value("name");
        changed.append(true);
        changed.append(true);
        changed.append(true);
        let expected = StructArray::new(
            vec![
                Field::new("id", DataType::Int64, true),
                Field::new("name", DataType::Utf8, true),
            ]
            .into(),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), Some(2), None])) as ArrayRef,
                Arc::new(StringArray::from(vec![Some("old \"x\""), Some("b"), None])),
            ],
            Some(NullBuffer::from(vec![true, true, false])),
        );
        let batch = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            (
                "name",
                Arc::new(StringArray::from(vec![Some("new"), None, Some("c")])),
            ),
            (
                "correction_id",
                Arc::new(StringArray::from(vec!["u1", "d2", "i3"])),
            ),
            (
                "op",
                Arc::new(StringArray::from(vec!["update", "delete", "insert"])),
            ),
            ("changed_fields", Arc::new(changed.finish())),
            ("expected", Arc::new(expected)),
        ])
        .unwrap();
        let parts = EventParts::new(
            "j",
            "r1",
            NaiveDate::from_ymd_opt(2024, 6, 1).unwrap(),
            "crm",
            "users",
            "2024-06-02T01:00:00.000000Z",
        );
        let mut out = Vec::new();
        let ids = write_events(&parts, "users", &["id".to_string()], &batch, &mut out).unwrap();
        assert_eq!(ids, ["u1", "d2", "i3"]);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let envelope = |id: &str, op: &str, key: &str| {
            format!(
                "{{\"specversion\":\"1.0\",\"id\":\"{id}\",\"source\":\"recon/j\",\
                 \"type\":\"recon.correction.{op}\",\"subject\":\"users/{}\",\
                 \"time\":\"2024-06-02T01:00:00.000000Z\",\"datacontenttype\":\"application/json\",\
                 \"reconrunid\":\"r1\",\"reconrundate\":\"2024-06-01\",\"reconsystem\":\"crm\",\
                 \"data\":{{\"entity\":\"users\",\"op\":\"{op}\",\"key\":{key},",
                key.replace('"', "\\\"")
            )
        };
        assert_eq!(
            lines[0],
            envelope("u1", "update", "{\"id\":1}")
                + "\"set\":{\"name\":\"new\"},\"expected\":{\"id\":1,\"name\":\"old \\\"x\\\"\"}}}"
        );
        assert_eq!(
            lines[1],
            envelope("d2", "delete", "{\"id\":2}")
                + "\"set\":{},\"expected\":{\"id\":2,\"name\":\"b\"}}}"
        );
        assert_eq!(
            lines[2],
            envelope("i3", "insert", "{\"id\":3}")
                + "\"set\":{\"id\":3,\"name\":\"c\"},\"expected\":{}}}"
        );
        assert_eq!(lines.len(), 3);
    }
}
