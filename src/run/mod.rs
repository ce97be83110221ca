//! A whole reconciliation run: open and check every snapshot and plan every entity first,
//! then diff entity by entity, apply the guardrails, write the summary and commit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use tracing::{Instrument, info, info_span, warn};

use crate::diff::plan::EntityPlan;
use crate::diff::{self, EntityResult, RunStamp};
use crate::error::{Error, ExitCode, Result};
use crate::job::JobConfig;
use crate::lock::{HeldLock, RunLock};
use crate::snapshot::Snapshot;
use crate::store;
use crate::write::vocabulary::Kind;
use crate::write::{self, LatestPointer, MANIFEST_FORMAT, Manifest, ManifestFile, RunLayout};
use object_store::ObjectStoreExt;

mod summary;

pub use summary::{
    EntitySummary, GuardrailVerdict, Inputs, PreviousRows, RunSummary, SideRows, Totals,
};

/// Options of one run. They are checked against the job before any I/O, where they
/// are made (the command line's `RunConfig`); [`run`] takes them as they are.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub run_date: NaiveDate,
    /// Defaults to a new, time-ordered id; see [`check_run_id`].
    pub run_id: Option<String>,
    /// Only these entities (all when empty); see [`JobConfig::check_entities`].
    pub entities: Vec<String>,
    /// Overrides every entity's guardrail share, in [0, 1].
    pub max_correction_share: Option<f64>,
    pub target_partitions: usize,
    /// Memory the diff queries may hold before spilling (bytes).
    pub memory_limit: usize,
    pub lock: LockMode,
    /// Report each entity's stage on stderr (the CLI sets it for a terminal without --quiet).
    pub progress: bool,
    /// Run the export stage first when the job declares exporters (`--no-export` clears it).
    pub export: bool,
    /// Which key-summary plan to start from (tests; `Auto` otherwise).
    pub key_plan: crate::diff::plan::KeyPlan,
}

/// Whether a run takes the job's lock for its run date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Take the lock, refusing stores that ignore conditional writes.
    Required { ttl: std::time::Duration },
    /// No lock: the scheduler guarantees one run at a time (`--no-lock`).
    Disabled,
}

impl Default for LockMode {
    fn default() -> Self {
        LockMode::Required {
            ttl: std::time::Duration::from_secs(crate::lock::DEFAULT_TTL_SECS),
        }
    }
}

/// One entity, ready to diff: both snapshots checked and the plan made.
pub struct Prepared {
    pub plan: EntityPlan,
    pub source: Snapshot,
    pub replica: Snapshot,
}

pub struct RunOutcome {
    pub summary: RunSummary,
    pub exit: ExitCode,
}

/// Opens both snapshots of every selected entity (`only` names entities of the job, as
/// checked by [`JobConfig::check_entities`]; all when empty) and plans its diff. Every
/// schema error surfaces here, before any diff runs.
pub async fn prepare(
    job: &JobConfig,
    run_date: NaiveDate,
    only: &[String],
) -> Result<Vec<Prepared>> {
    let mut prepared = Vec::new();
    for entity in &job.entities {
        if !only.is_empty() && !only.contains(&entity.name) {
            continue;
        }
        let open = |system: &str| {
            let url = crate::snapshot::layout::snapshot_url(job, entity, system, run_date);
            let system = system.to_string();
            async move {
                let location = store::open(&url)?;
                let exported = job.exporters.get(&system).is_some_and(|e| {
                    e.kind.writes_snapshots() && entity.exports.contains_key(&system)
                });
                Snapshot::open(location, &entity.name, &system, exported).await
            }
        };
        let (source, replica) = futures::try_join!(open(&job.source), open(&job.replica))?;
        let plan = EntityPlan::try_new(entity, &source.schema, &replica.schema, &job.path)?;
        prepared.push(Prepared {
            plan,
            source,
            replica,
        });
    }
    Ok(prepared)
}

/// A fresh run id: UTC start time (sortable) and a random suffix.
pub fn new_run_id(now: DateTime<Utc>) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), &suffix[..8])
}

pub fn check_run_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "run id `{id}` must be 1 to 64 letters, digits, `-`, `_` or `.`"
        )))
    }
}

/// Runs the job for one run date and commits its outputs.
pub async fn run(job: &JobConfig, opts: &RunOptions) -> Result<RunOutcome> {
    let started_at = Utc::now();
    let clock = Instant::now();
    let run_id = match &opts.run_id {
        Some(id) => id.clone(),
        None => new_run_id(started_at),
    };
    let layout = RunLayout {
        output: store::open(&job.output)?,
        run_date: opts.run_date,
        run_id: run_id.clone(),
    };
    let span = info_span!("run", job = %job.name, run_id = %run_id, run_date = %opts.run_date);
    let lock = match opts.lock {
        LockMode::Disabled => {
            warn!("running without a lock (--no-lock)");
            None
        }
        LockMode::Required { ttl } => {
            if !crate::lock::probe(&layout.output).await? {
                return Err(Error::NoConditionalWrites {
                    url: layout.output.url(),
                });
            }
            let lock =
                RunLock::acquire(&layout.output, &job.name, opts.run_date, &run_id, ttl).await?;
            Some(Arc::new(lock.keep()))
        }
    };
    let outcome = match refuse_committed(&layout).await {
        Ok(()) => {
            if lock.is_some() {
                write::remove_abandoned(&layout).await;
            }
            let work = run_locked(
                job,
                opts,
                started_at,
                clock,
                run_id,
                layout.clone(),
                lock.clone(),
            );
            let outcome = crate::signal::until_stopped(work.instrument(span)).await;
            if let Err(Error::Interrupted { signal }) = &outcome {
                warn!(
                    signal,
                    "stopped by a signal: removing the run's uncommitted files"
                );
                // The writers of the dropped stage stop at their next await; a file
                // operation already under way finishes first.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                write::remove_uncommitted(&layout).await;
            }
            outcome
        }
        Err(e) => Err(e),
    };
    if let Some(lock) = lock {
        lock.release().await;
    }
    outcome
}

/// A committed run is immutable: a run whose id and date already have a manifest is
/// refused before it writes anything, since its files would land on the committed
/// run's paths. Checked under the lock, so a run of the same id cannot commit between
/// the check and the write.
async fn refuse_committed(layout: &RunLayout) -> Result<()> {
    let manifest = layout.path(&layout.manifest());
    match layout.output.store.head(&manifest).await {
        Ok(_) => Err(Error::Usage(format!(
            "run `{}` of {} is already committed ({}); a committed run is never rewritten: \
             pass a new --run-id (from a scheduler, one per attempt: add the try \
             number), or leave --run-id out for a fresh one",
            layout.run_id,
            layout.run_date,
            layout.url(&layout.manifest())
        ))),
        Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(Error::Storage {
            location: layout.url(&layout.manifest()),
            source,
        }),
    }
}

async fn run_locked(
    job: &JobConfig,
    opts: &RunOptions,
    started_at: DateTime<Utc>,
    clock: Instant,
    run_id: String,
    layout: RunLayout,
    lock: Option<Arc<HeldLock>>,
) -> Result<RunOutcome> {
    let export = if opts.export && crate::export::has_exporters(job) {
        let export_clock = Instant::now();
        if opts.progress {
            eprintln!("recon: exporting");
        }
        let report = crate::export::export(
            job,
            &crate::export::ExportOptions {
                run_date: opts.run_date,
                systems: vec![],
                entities: opts.entities.clone(),
                lock: lock.clone(),
            },
        )
        .await?;
        Some((report, export_clock.elapsed().as_millis() as u64))
    } else {
        None
    };
    let plan_clock = Instant::now();
    let mut prepared = prepare(job, opts.run_date, &opts.entities).await?;
    for p in &mut prepared {
        p.plan.key_plan = opts.key_plan;
    }
    let plan_ms = plan_clock.elapsed().as_millis() as u64;
    let stamp = RunStamp {
        job: job.name.clone(),
        run_id: run_id.clone(),
        run_date: opts.run_date,
        source: job.source.clone(),
        replica: job.replica.clone(),
    };
    // Corrections are also written as compensation events, as the diff makes them;
    // those an earlier apply already applied are reported.
    let events = crate::write::events::Events::load(job, &layout).await?;
    let mut written: Vec<String> = Vec::new();
    let result = diff_all(job, opts, &prepared, &stamp, &layout, &events, &mut written).await;
    let (entities, files) = match result {
        Ok(r) => r,
        Err(e) => {
            write::remove(&layout, &written).await;
            return Err(e);
        }
    };
    let tripped: Vec<String> = entities
        .iter()
        .filter(|e| e.guardrail.tripped)
        .map(|e| e.entity.clone())
        .collect();
    let status = if tripped.is_empty() {
        "success"
    } else {
        "guardrail_tripped"
    };
    let mut durations_ms = BTreeMap::new();
    durations_ms.insert("prepare".to_string(), plan_ms);
    if let Some((_, ms)) = &export {
        durations_ms.insert("export".to_string(), *ms);
    }
    durations_ms.insert("total".to_string(), clock.elapsed().as_millis() as u64);
    let summary = RunSummary {
        job: job.name.clone(),
        run_id: run_id.clone(),
        run_date: opts.run_date,
        status: status.into(),
        totals: Totals::of(&entities),
        source: job.source.clone(),
        replica: job.replica.clone(),
        output: layout.output.url(),
        manifest: layout.url(&layout.manifest()),
        started_at,
        finished_at: Utc::now(),
        entities,
        durations_ms,
        export: export.map(|(r, _)| r),
    };
    let commit = async {
        let summary_size = write::put_json(&layout, &layout.summary(), &summary).await?;
        written.push(layout.summary());
        let mut files = files;
        files.push(ManifestFile {
            path: layout.summary(),
            kind: "summary".into(),
            entity: None,
            system: None,
            rows: None,
            size: summary_size,
        });
        let manifest = Manifest {
            format_version: MANIFEST_FORMAT,
            job: job.name.clone(),
            run_id: run_id.clone(),
            run_date: opts.run_date,
            committed_at: Utc::now(),
            status: status.into(),
            source: job.source.clone(),
            replica: job.replica.clone(),
            apply_order: prepared
                .iter()
                .map(|p| p.plan.entity.name.clone())
                .collect(),
            withheld: tripped.clone(),
            files,
        };
        // The manifest is the commit: it is written last, after every file it lists,
        // and only while this run still holds its lock.
        if let Some(lock) = &lock {
            lock.check().await?;
        }
        write::put_json(&layout, &layout.manifest(), &manifest).await?;
        Ok::<_, Error>(())
    };
    if let Err(e) = commit.await {
        // Clean up only when the manifest surely did not land: a committed run's files
        // must never be removed.
        let manifest = layout.path(&layout.manifest());
        if let Err(object_store::Error::NotFound { .. }) = layout.output.store.head(&manifest).await
        {
            write::remove(&layout, &written).await;
        }
        return Err(e);
    }
    let pointer = LatestPointer {
        run_id: run_id.clone(),
        manifest: layout.manifest(),
    };
    if let Err(e) = write::put_json(&layout, &layout.latest(), &pointer).await {
        warn!(error = %e, "run committed, but the latest-run pointer could not be updated");
    }
    info!(status, "run committed");
    let exit = if tripped.is_empty() {
        ExitCode::Success
    } else {
        ExitCode::Guardrail
    };
    Ok(RunOutcome { summary, exit })
}

async fn diff_all(
    job: &JobConfig,
    opts: &RunOptions,
    prepared: &[Prepared],
    stamp: &RunStamp,
    layout: &RunLayout,
    events: &crate::write::events::Events,
    written: &mut Vec<String>,
) -> Result<(Vec<EntitySummary>, Vec<ManifestFile>)> {
    let previous = previous_rows(layout).await?;
    let mut summaries = Vec::new();
    let mut files = Vec::new();
    // The events files are listed after every other entity file.
    let mut event_files = Vec::new();
    for p in prepared {
        let entity = &p.plan.entity;
        let span = info_span!("entity", entity = %entity.name);
        // The key summary is a join sized to fit in memory or else an aggregation that
        // spills to disk past the memory limit; the diff's joins hold only the keys
        // that differ in memory.
        let ctx = diff::session_context(&diff::SessionOptions {
            target_partitions: opts.target_partitions,
            memory_limit: opts.memory_limit,
            file_statistics: !(p.source.may_hide_nan() || p.replica.may_hide_nan()),
        })?;
        p.source.register(&ctx, "source")?;
        p.replica.register(&ctx, "replica")?;
        // Outputs of this entity are uncommitted until the manifest lists them.
        written.push(layout.discrepancies(&entity.name));
        written.push(layout.corrections(&job.replica, &entity.name));
        written.push(layout.corrections(&job.source, &entity.name));
        written.push(layout.events(&job.replica, &entity.name));
        written.push(layout.events(&job.source, &entity.name));
        let started = Instant::now();
        let progress = opts.progress.then(|| diff::progress::Progress {
            label: format!(
                "[{}/{}] {}",
                summaries.len() + 1,
                prepared.len(),
                entity.name
            ),
            sides: [
                (p.source.object_paths(), p.source.rows),
                (p.replica.object_paths(), p.replica.rows),
            ],
        });
        let mut result: EntityResult = diff::run_entity(
            &ctx,
            &p.plan,
            [&p.source, &p.replica],
            stamp,
            layout,
            events,
            progress.as_ref(),
        )
        .instrument(span.clone())
        .await?;
        if let Some(progress) = &progress {
            eprintln!(
                "\r{}: {} source rows, {} replica rows, done in {:.1}s\x1b[K",
                progress.label,
                p.source.rows,
                p.replica.rows,
                started.elapsed().as_secs_f64()
            );
        }
        let limit = opts
            .max_correction_share
            .unwrap_or(entity.max_correction_share);
        let verdict = guardrail(
            &result,
            p.source.rows,
            p.replica.rows,
            limit,
            entity.max_row_drop,
            previous.get(&entity.name).cloned(),
        );
        let discrepancies = result.counts.iter().map(|c| c.count).sum();
        span.in_scope(|| {
            info!(
                rows_source = p.source.rows,
                rows_replica = p.replica.rows,
                discrepancies,
                corrections = verdict.corrections,
                "entity reconciled"
            )
        });
        files.push(result.discrepancy_file.clone());
        // A withheld entity's corrections are not written: none can be back.
        let reappeared = if verdict.tripped {
            warn!(entity = %entity.name, reason = verdict.reason.as_deref().unwrap_or(""), "guardrail tripped: corrections withheld");
            let rels: Vec<String> = result
                .correction_files
                .iter()
                .chain(&result.event_files)
                .map(|f| f.path.clone())
                .collect();
            write::remove(layout, &rels).await;
            Vec::new()
        } else {
            files.extend(result.correction_files.iter().cloned());
            event_files.extend(result.event_files.iter().cloned());
            if !result.reappeared.is_empty() {
                warn!(entity = %entity.name, count = result.reappeared.len(), "corrections applied by an earlier apply are back: the fix did not stick");
            }
            std::mem::take(&mut result.reappeared)
        };
        let mut durations_ms = BTreeMap::new();
        durations_ms.insert("key_summary".to_string(), result.key_summary_ms);
        durations_ms.insert("diff".to_string(), result.diff_ms);
        summaries.push(EntitySummary {
            entity: entity.name.clone(),
            rows: SideRows {
                source: p.source.rows,
                replica: p.replica.rows,
            },
            discrepancies,
            counts: result.counts,
            actions: std::mem::take(&mut result.actions),
            one_sided: p.plan.one_sided.clone(),
            corrections: result.corrections,
            guardrail: verdict,
            inputs: Inputs {
                source: p.source.clone(),
                replica: p.replica.clone(),
            },
            key_summary_plan: result.key_summary_plan,
            unrepresentable: std::mem::take(&mut result.unrepresentable),
            durations_ms,
            reappeared,
        });
    }
    files.extend(event_files);
    Ok((summaries, files))
}

/// Corrections to one system may touch at most `limit` of the entity's keys: the
/// keys on either side, counted as the source's rows plus the replica's extra rows.
/// Each key gets at most one correction per system (an insert, an update or a delete
/// in the replica; an update in the source), so the share lies in [0, 1] and a limit
/// of 1 releases every entity.
fn guardrail(
    result: &EntityResult,
    source_rows: u64,
    replica_rows: u64,
    limit: f64,
    max_row_drop: f64,
    previous: Option<PreviousRows>,
) -> GuardrailVerdict {
    let corrections = result.correction_total();
    let extra: u64 = result
        .counts
        .iter()
        .filter(|c| c.kind == Kind::ExtraInReplica)
        .map(|c| c.count)
        .sum();
    let rows = source_rows + extra;
    let busiest = result
        .corrections
        .values()
        .map(|ops| ops.values().sum::<u64>())
        .max()
        .unwrap_or(0);
    let share = if rows == 0 {
        0.0
    } else {
        (busiest as f64 / rows as f64).min(1.0)
    };
    let mut reasons = Vec::new();
    let mut tripped_by = Vec::new();
    if share > limit {
        tripped_by.push("max_correction_share");
        reasons.push(format!(
            "corrections would touch {busiest} of {rows} keys in one system ({:.2}%), above the limit of {:.2}%",
            share * 100.0,
            limit * 100.0
        ));
    }
    if let Some(prev) = &previous {
        for (side, now, before) in [
            ("source", source_rows, prev.source),
            ("replica", replica_rows, prev.replica),
        ] {
            if (now as f64) < (1.0 - max_row_drop) * before as f64 {
                if !tripped_by.contains(&"max_row_drop") {
                    tripped_by.push("max_row_drop");
                }
                reasons.push(format!(
                    "the {side} snapshot has {now} rows, down from {before} in run {} of {} (more than {:.0}% fewer)",
                    prev.run_id,
                    prev.run_date,
                    max_row_drop * 100.0
                ));
            }
        }
    }
    GuardrailVerdict {
        max_correction_share: limit,
        corrections,
        rows,
        share,
        max_row_drop,
        previous,
        tripped: !reasons.is_empty(),
        tripped_by,
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
    }
}

#[derive(Deserialize)]
struct PastSummary {
    entities: Vec<PastEntity>,
}

#[derive(Deserialize)]
struct PastEntity {
    entity: String,
    rows: PastRows,
}

#[derive(Deserialize)]
struct PastRows {
    source: u64,
    replica: u64,
}

/// Rows per entity in the newest committed run of an earlier run date, found through
/// `_latest.json` pointers and manifests only: uncommitted runs are never read.
async fn previous_rows(layout: &RunLayout) -> Result<BTreeMap<String, PreviousRows>> {
    let dates = write::earlier_run_dates(&layout.output, "runs", layout.run_date).await?;
    for date in dates {
        let Some(pointer) = passed_over(
            write::get_json::<LatestPointer>(
                &layout.output,
                &format!("runs/run_date={date}/_latest.json"),
            )
            .await,
        )?
        else {
            continue;
        };
        let Some(manifest) =
            passed_over(write::get_json::<Manifest>(&layout.output, &pointer.manifest).await)?
        else {
            continue;
        };
        let Some(summary) = manifest.files.iter().find(|f| f.kind == "summary") else {
            continue;
        };
        let Some(past) =
            passed_over(write::get_json::<PastSummary>(&layout.output, &summary.path).await)?
        else {
            continue;
        };
        return Ok(past
            .entities
            .into_iter()
            .map(|e| {
                let rows = PreviousRows {
                    run_date: date,
                    run_id: manifest.run_id.clone(),
                    source: e.rows.source,
                    replica: e.rows.replica,
                };
                (e.entity, rows)
            })
            .collect());
    }
    Ok(BTreeMap::new())
}

/// A file of an earlier run date that is damaged is passed over with a warning: one bad
/// file must not stop every later run.
fn passed_over<T>(found: Result<Option<T>>) -> Result<Option<T>> {
    match found {
        Err(Error::BadFile { path, message }) => {
            warn!(file = %path, "{message}; the guardrail passes over this run date");
            Ok(None)
        }
        other => other,
    }
}
