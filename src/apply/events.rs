//! Corrections as compensation events, and corrections that come back after an apply.
//!
//! Every committed run also writes its corrections as newline-delimited JSON events in a
//! CloudEvents 1.0 envelope, one file per system and entity:
//! `{output}/events/run_date=D/run_id=R/system=S/entity=E/events.ndjson`. The event id
//! is the correction id (deterministic), so idempotent consumers can deduplicate.

use std::collections::{BTreeMap, HashMap};

use chrono::{NaiveDate, Utc};
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::json;

use super::{Correction, read_corrections};
use crate::error::Result;
use crate::job::JobConfig;
use crate::store::Location;
use crate::write::{ManifestFile, RunLayout};

/// The event for one correction.
pub fn event(
    job: &JobConfig,
    run: (&str, NaiveDate),
    system: &str,
    entity: &str,
    key: &[String],
    c: &Correction,
    time: &str,
) -> serde_json::Value {
    let obj = |pairs: &mut dyn Iterator<Item = &(String, super::Value)>| {
        serde_json::Value::Object(pairs.map(|(k, v)| (k.clone(), v.to_json())).collect())
    };
    let key_obj = obj(&mut c.values.iter().filter(|(k, _)| key.contains(k)));
    let set = match c.op.as_str() {
        "insert" => obj(&mut c.values.iter()),
        "delete" => json!({}),
        _ => obj(&mut c.values.iter().filter(|(k, _)| c.changed.contains(k))),
    };
    json!({
        "specversion": "1.0",
        "id": c.id,
        "source": format!("recon/{}", job.name),
        "type": format!("recon.correction.{}", c.op),
        "subject": format!("{entity}/{key_obj}"),
        "time": time,
        "datacontenttype": "application/json",
        "reconrunid": run.0,
        "reconrundate": run.1.to_string(),
        "reconsystem": system,
        "data": {
            "entity": entity,
            "op": c.op,
            "key": key_obj,
            "set": set,
            "expected": obj(&mut c.expected.iter()),
        }
    })
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
pub async fn process(
    job: &JobConfig,
    layout: &RunLayout,
    files: &[ManifestFile],
    written: &mut Vec<String>,
) -> Result<RunCorrections> {
    let applied = applied_before(&layout.output, layout.run_date).await?;
    let time = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut events = Vec::new();
    let mut reappeared: BTreeMap<String, Vec<Reappeared>> = BTreeMap::new();
    for f in files.iter().filter(|f| f.kind == "corrections") {
        let (Some(entity), Some(system)) = (&f.entity, &f.system) else {
            continue;
        };
        let corrections = read_corrections(&layout.output, &f.path).await?;
        let key = target_key(job, entity, system);
        let mut body = String::new();
        for c in &corrections {
            let e = event(
                job,
                (&layout.run_id, layout.run_date),
                system,
                entity,
                &key,
                c,
                &time,
            );
            body.push_str(&e.to_string());
            body.push('\n');
            if let Some((run_id, date)) = applied.get(&c.id) {
                reappeared
                    .entry(entity.clone())
                    .or_default()
                    .push(Reappeared {
                        correction_id: c.id.clone(),
                        applied_in_run: run_id.clone(),
                        applied_run_date: *date,
                    });
            }
        }
        let rel = format!(
            "events/run_date={}/run_id={}/system={system}/entity={entity}/events.ndjson",
            layout.run_date, layout.run_id
        );
        let size = body.len() as u64;
        layout
            .output
            .store
            .put(&layout.path(&rel), PutPayload::from(body.into_bytes()))
            .await?;
        written.push(rel.clone());
        events.push(ManifestFile {
            path: rel,
            kind: "events".into(),
            entity: Some(entity.clone()),
            system: Some(system.clone()),
            rows: Some(corrections.len() as u64),
            size,
        });
    }
    Ok(RunCorrections { events, reappeared })
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
