//! Corrections as compensation events, and corrections that come back after an apply.
//!
//! Every committed run also writes its corrections as newline-delimited JSON events in a
//! CloudEvents 1.0 envelope, one file per system and entity:
//! `{output}/events/run_date=D/run_id=R/system=S/entity=E/events.ndjson`. The event id
//! is the correction id (deterministic), so idempotent consumers can deduplicate.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use tokio::io::AsyncWriteExt;

use super::value::Value;
use super::{Correction, CorrectionBatches};
use crate::error::{Error, Result};
use crate::job::JobConfig;
use crate::store::Location;
use crate::write::{ManifestFile, RunLayout};

/// The run an event belongs to, and what every event of one file shares.
pub struct EventContext<'a> {
    pub job: &'a JobConfig,
    pub run_id: &'a str,
    pub run_date: NaiveDate,
    pub system: &'a str,
    pub entity: &'a str,
    /// Key columns in the target system's names.
    pub key: &'a [String],
    /// When the events were written (RFC 3339, UTC).
    pub time: &'a str,
}

/// Appends the event for one correction as one line of JSON. Written directly, not
/// through a JSON tree: a run can have hundreds of thousands of corrections.
pub fn write_event(cx: &EventContext<'_>, c: &Correction, out: &mut Vec<u8>) {
    let text = |out: &mut Vec<u8>, s: &str| {
        serde_json::to_writer(&mut *out, s).expect("writing to memory");
    };
    let object = |out: &mut Vec<u8>, pairs: &mut dyn Iterator<Item = &(String, Value)>| {
        out.push(b'{');
        for (i, (name, value)) in pairs.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, name).expect("writing to memory");
            out.push(b':');
            value.write_json(out);
        }
        out.push(b'}');
    };
    let mut key = Vec::new();
    object(
        &mut key,
        &mut c.values.iter().filter(|(k, _)| cx.key.contains(k)),
    );
    let key = String::from_utf8(key).expect("JSON is UTF-8");
    out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
    text(out, &c.id);
    out.extend_from_slice(b",\"source\":");
    text(out, &format!("recon/{}", cx.job.name));
    out.extend_from_slice(b",\"type\":");
    text(out, &format!("recon.correction.{}", c.op));
    out.extend_from_slice(b",\"subject\":");
    text(out, &format!("{}/{key}", cx.entity));
    out.extend_from_slice(b",\"time\":");
    text(out, cx.time);
    out.extend_from_slice(b",\"datacontenttype\":\"application/json\",\"reconrunid\":");
    text(out, cx.run_id);
    out.extend_from_slice(b",\"reconrundate\":");
    text(out, &cx.run_date.to_string());
    out.extend_from_slice(b",\"reconsystem\":");
    text(out, cx.system);
    out.extend_from_slice(b",\"data\":{\"entity\":");
    text(out, cx.entity);
    out.extend_from_slice(b",\"op\":");
    text(out, &c.op);
    out.extend_from_slice(b",\"key\":");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b",\"set\":");
    match c.op.as_str() {
        "insert" => object(out, &mut c.values.iter()),
        "delete" => out.extend_from_slice(b"{}"),
        _ => object(
            out,
            &mut c.values.iter().filter(|(k, _)| c.changed.contains(k)),
        ),
    }
    out.extend_from_slice(b",\"expected\":");
    object(out, &mut c.expected.iter());
    out.extend_from_slice(b"}}\n");
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
            job: Arc::clone(&job),
            layout: Arc::clone(&layout),
            applied: Arc::clone(&applied),
            time: Arc::clone(&time),
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
    job: Arc<JobConfig>,
    layout: Arc<RunLayout>,
    applied: Arc<HashMap<String, (String, NaiveDate)>>,
    time: Arc<str>,
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
    fn render(&self, url: &str, batch: &arrow::array::RecordBatch) -> Result<Rendered> {
        let cx = EventContext {
            job: &self.job,
            run_id: &self.layout.run_id,
            run_date: self.layout.run_date,
            system: &self.system,
            entity: &self.entity,
            key: &self.key,
            time: &self.time,
        };
        let corrections = CorrectionBatches::corrections(url, batch)?;
        let mut body = Vec::with_capacity(corrections.len() * 512);
        let mut back = Vec::new();
        for c in &corrections {
            write_event(&cx, c, &mut body);
            if let Some((run_id, date)) = self.applied.get(&c.id) {
                back.push(Reappeared {
                    correction_id: c.id.clone(),
                    applied_in_run: run_id.clone(),
                    applied_run_date: *date,
                });
            }
        }
        Ok((body, back, corrections.len() as u64))
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
