//! `recon export`: run the job's exporters for one run date, without diffing.

use clap::Args;

use super::{EntityArgs, Format, FormatArgs, GlobalArgs, JobArgs, LakeArgs, LockArgs};
use crate::error::{Error, ExitCode, Result};
use crate::export::{ExportOptions, ExportReport};
use crate::job::JobConfig;
use crate::run::LockMode;

#[derive(Debug, Args)]
#[command(
    mut_arg("run_date", |a| a.help("The run date whose snapshots to write (YYYY-MM-DD)")),
    mut_arg("entities", |a| a.help("Export only this entity (repeatable)")),
    mut_arg("lake", |a| a.help(
        "Write snapshots into this lake (URL or path) instead of the job's; the run-date \
         lock then goes to {lake}/recon/{job name}, where `recon run --lake` takes it"
    )),
    mut_arg("format", |a| a.help("How to print the export report on stdout")),
)]
pub struct ExportArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Export only this system (repeatable; default: every system with an exporter).
    #[arg(long = "system")]
    pub systems: Vec<String>,
    #[command(flatten)]
    pub entities: EntityArgs,
    #[command(flatten)]
    pub lake: LakeArgs,
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub lock: LockArgs,
}

/// An export as the command line asks for it: the job with `--lake` in place and the
/// selection checked against it, before anything touches a store; never changed after.
#[derive(Debug)]
pub struct ExportConfig {
    pub job: JobConfig,
    /// What to export (its `lock` is the one taken when the export starts).
    pub options: ExportOptions,
    pub lock: LockMode,
    pub format: Format,
}

impl ExportConfig {
    /// Loads the job and checks `--system` and `--entity` against it.
    pub fn try_new(args: ExportArgs) -> Result<Self> {
        let job = JobConfig::load(&args.job.job)?.relocated(args.lake.lake.as_deref(), None)?;
        if !crate::export::has_exporters(&job) {
            return Err(Error::Usage(format!(
                "job {} declares no exporters ([exporters.<system>]); its snapshots are read as they are",
                job.path.display()
            )));
        }
        for system in &args.systems {
            job.check_system(system)?;
            if !job
                .exporters
                .get(system)
                .is_some_and(|e| e.kind.writes_snapshots())
            {
                return Err(Error::Usage(format!(
                    "system `{system}` has no exporter in job {}: its snapshots are read as they are",
                    job.path.display()
                )));
            }
        }
        job.check_entities(&args.entities.entities)?;
        Ok(ExportConfig {
            job,
            options: ExportOptions {
                run_date: args.job.run_date,
                systems: args.systems,
                entities: args.entities.entities,
                lock: None,
            },
            lock: args.lock.mode(),
            format: args.format.format,
        })
    }
}

pub async fn run(args: ExportArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let config = ExportConfig::try_new(args)?;
    // The same lock as `recon run`: an export never overlaps a run of the same date.
    let lock =
        super::take_lock(&config.job, config.options.run_date, config.lock, "export").await?;
    let opts = ExportOptions {
        lock: lock.clone(),
        ..config.options.clone()
    };
    let report = crate::signal::until_stopped(crate::export::export(&config.job, &opts)).await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    let report = report?;
    if !global.quiet {
        print_report(&report, config.format);
    }
    Ok(ExitCode::Success)
}

pub fn print_report(r: &ExportReport, format: Format) {
    match format {
        Format::Json => super::print::print_json(ExitCode::Success, r),
        Format::Text => {
            println!(
                "{:<12} {:<16} {:>12} {:>12} {:>9}  snapshot",
                "system", "entity", "rows", "bytes", "seconds"
            );
            for s in &r.systems {
                for e in &s.entities {
                    println!(
                        "{:<12} {:<16} {:>12} {:>12} {:>9.2}  {}",
                        s.system,
                        e.entity,
                        e.rows,
                        e.bytes,
                        e.duration_ms as f64 / 1000.0,
                        e.url
                    );
                }
            }
        }
    }
}
