//! Corrections as compensation events, and corrections that come back after an apply.
//!
//! Every committed run also writes its corrections as newline-delimited JSON events in a
//! CloudEvents 1.0 envelope, one file per system and entity:
//! `{output}/events/run_date=D/run_id=R/system=S/entity=E/events.ndjson`. The event id
//! is the correction id (deterministic), so idempotent consumers can deduplicate.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use chrono::{NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use tokio::io::AsyncWriteExt;

use super::CorrectionBatches;
use super::value::{CellKind, write_cell_json};
use crate::diff::json_string;
use crate::error::{Error, Result};
use crate::job::JobConfig;
use crate::store::Location;
use crate::write::{ManifestFile, RunLayout};

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

/// What the run's correction files say, for the events and the reappeared check.
pub struct RunCorrections {
    pub events: Vec<ManifestFile>,
    /// entity → correction ids applied by an earlier run's apply that are back.
    pub reappeared: BTreeMap<String, Vec<Reappeared>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Reappeared {
    pub correction_id: String,
    pub applied_in_run: String,
    pub applied_run_date: NaiveDate,
}

/// Writes the events files for the run's committed correction files and finds the
/// corrections an earlier apply already applied. `written` collects the new files.
///
/// Files are written concurrently, as many at a time as the machine has cores: each is
/// a read of one correction file and a JSON rendering of its rows, bound by CPU.
pub async fn process(
    job: &JobConfig,
    layout: &RunLayout,
    files: &[ManifestFile],
    written: &mut Vec<String>,
) -> Result<RunCorrections> {
    let applied = Arc::new(applied_before(&layout.output, layout.run_date).await?);
    let time: Arc<str> = Utc::now()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        .into();
    let (job, layout) = (Arc::new(job.clone()), Arc::new(layout.clone()));
    let at_once = crate::parallel::cores();
    // Dropping the set (on an error) aborts the files still being written.
    let mut running = tokio::task::JoinSet::new();
    let mut done = Vec::new();
    for (i, f) in files.iter().filter(|f| f.kind == "corrections").enumerate() {
        let (Some(entity), Some(system)) = (f.entity.clone(), f.system.clone()) else {
            continue;
        };
        let rel = format!(
            "events/run_date={}/run_id={}/system={system}/entity={entity}/events.ndjson",
            layout.run_date, layout.run_id
        );
        // The file is not listed anywhere until the run's manifest is written.
        written.push(rel.clone());
        if running.len() >= at_once {
            done.push(next_file(&mut running).await?);
        }
        let file = EventsFile {
            key: target_key(&job, &entity, &system),
            parts: EventParts::new(
                &job.name,
                &layout.run_id,
                layout.run_date,
                &system,
                &entity,
                &time,
            ),
            layout: Arc::clone(&layout),
            applied: Arc::clone(&applied),
            corrections: f.path.clone(),
            entity,
            system,
            rel,
        };
        running.spawn(async move { (i, Arc::new(file).write(at_once).await) });
    }
    while !running.is_empty() {
        done.push(next_file(&mut running).await?);
    }
    done.sort_by_key(|(i, ..)| *i);
    let mut events = Vec::new();
    let mut reappeared: BTreeMap<String, Vec<Reappeared>> = BTreeMap::new();
    for (_, file, back) in done {
        if !back.is_empty() {
            let entity = file.entity.clone().unwrap_or_default();
            reappeared.entry(entity).or_default().extend(back);
        }
        events.push(file);
    }
    Ok(RunCorrections { events, reappeared })
}

type Written = (usize, ManifestFile, Vec<Reappeared>);

/// One events file's manifest entry and the corrections an earlier apply applied.
type FileEvents = Result<(ManifestFile, Vec<Reappeared>)>;

/// The next events file to be finished, in any order.
async fn next_file(running: &mut tokio::task::JoinSet<(usize, FileEvents)>) -> Result<Written> {
    match running.join_next().await {
        Some(Ok((i, written))) => written.map(|(file, back)| (i, file, back)),
        Some(Err(e)) => Err(Error::Internal(format!("writing events: {e}"))),
        None => Err(Error::Internal("writing events: no file running".into())),
    }
}

/// One events file: the events of one committed correction file.
struct EventsFile {
    parts: EventParts,
    layout: Arc<RunLayout>,
    applied: Arc<HashMap<String, (String, NaiveDate)>>,
    /// Key columns in the target system's names.
    key: Vec<String>,
    /// The correction file, relative to the output.
    corrections: String,
    entity: String,
    system: String,
    /// The events file, relative to the output.
    rel: String,
}

/// The events of one batch of corrections: the JSON lines, the corrections that an
/// earlier apply already applied, and how many events.
type Rendered = (Vec<u8>, Vec<Reappeared>, u64);

impl EventsFile {
    /// Streams the events to the store in parts; returns the file's manifest entry and
    /// the corrections that an earlier apply already applied. Batches are rendered on
    /// the blocking pool, `at_once` at a time, and written in order.
    async fn write(self: Arc<Self>, at_once: usize) -> FileEvents {
        let layout = &self.layout;
        let mut sink = BufWriter::new(Arc::clone(&layout.output.store), layout.path(&self.rel));
        let (mut rows, mut size) = (0u64, 0u64);
        let mut back = Vec::new();
        let failed = |e: std::io::Error| Error::Storage {
            location: layout.url(&self.rel),
            source: object_store::Error::Generic {
                store: "events",
                source: Box::new(e),
            },
        };
        let file = CorrectionBatches::open(&layout.output, &self.corrections).await?;
        let url: Arc<str> = file.url.into();
        let batches = futures::stream::iter(file.reader).map({
            let url = Arc::clone(&url);
            move |batch| batch.map_err(|e| Error::Internal(format!("{url}: {e}")))
        });
        let this = Arc::clone(&self);
        let rendered =
            crate::parallel::map_blocking(batches, at_once, "rendering events", move |batch| {
                this.render(&url, &batch)
            });
        let mut rendered = std::pin::pin!(rendered);
        while let Some(batch) = rendered.next().await {
            let (body, reappeared, n): Rendered = batch?;
            rows += n;
            size += body.len() as u64;
            back.extend(reappeared);
            sink.write_all(&body).await.map_err(failed)?;
        }
        sink.shutdown().await.map_err(failed)?;
        let file = ManifestFile {
            path: self.rel.clone(),
            kind: "events".into(),
            entity: Some(self.entity.clone()),
            system: Some(self.system.clone()),
            rows: Some(rows),
            size,
        };
        Ok((file, back))
    }

    /// The events of one batch read from the correction file at `url`.
    fn render(&self, url: &str, batch: &RecordBatch) -> Result<Rendered> {
        let mut body = Vec::with_capacity(batch.num_rows() * 1024);
        let ids = write_events(&self.parts, &self.entity, &self.key, batch, &mut body)
            .map_err(|m| Error::Internal(format!("{url}: {m}")))?;
        let back = ids
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
        Ok((body, back, ids.len() as u64))
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
    let listing = match applies
        .store
        .list_with_delimiter(Some(&applies.prefix))
        .await
    {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(HashMap::new()),
        Err(e) => return Err(e.into()),
    };
    let mut dates: Vec<NaiveDate> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename()?.strip_prefix("run_date=")?.parse().ok())
        .filter(|d| *d < run_date)
        .collect();
    dates.sort();
    let mut out = HashMap::new();
    for date in dates.into_iter().rev().take(LOOKBACK_DATES) {
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
