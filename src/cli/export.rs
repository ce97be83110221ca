//! `recon export`: run the job's exporters for one run date, without diffing.

use std::path::PathBuf;

use chrono::NaiveDate;
use clap::Args;

use super::{Format, GlobalArgs};
use crate::error::{Error, ExitCode, Result};
use crate::export::{ExportOptions, ExportReport};
use crate::job::JobConfig;
use crate::lock::RunLock;
use crate::run::LockMode;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The job file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    /// The run date whose snapshots to write (YYYY-MM-DD).
    #[arg(long, value_parser = super::parse_date)]
    pub run_date: NaiveDate,
    /// Export only this system (repeatable; default: every system with an exporter).
    #[arg(long = "system")]
    pub systems: Vec<String>,
    /// Export only this entity (repeatable).
    #[arg(long = "entity")]
    pub entities: Vec<String>,
    /// Write snapshots into this lake instead of the job's (URL or path).
    #[arg(long)]
    pub lake: Option<String>,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub lock: super::LockArgs,
}

pub async fn run(args: ExportArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let mut job = JobConfig::load(&args.job)?;
    if let Some(lake) = &args.lake {
        job.lake = crate::store::resolve_url(lake, std::path::Path::new("."))?;
    }
    if !crate::export::has_exporters(&job) {
        return Err(Error::Usage(format!(
            "job {} declares no exporters ([exporters.<system>]); its snapshots are read as they are",
            job.path.display()
        )));
    }
    // The same lock as `recon run`: an export never overlaps a run of the same date.
    let output = crate::store::open(&job.output)?;
    let lock = match args.lock.mode() {
        LockMode::Disabled => None,
        LockMode::Required { ttl } => {
            if !crate::lock::probe(&output).await? {
                return Err(Error::NoConditionalWrites { url: output.url() });
            }
            let id = format!("export-{}", crate::run::new_run_id(chrono::Utc::now()));
            let lock = RunLock::acquire(&output, &job.name, args.run_date, &id, ttl).await?;
            Some(std::sync::Arc::new(lock.keep()))
        }
    };
    let opts = ExportOptions {
        run_date: args.run_date,
        systems: args.systems,
        entities: args.entities,
        lock: lock.clone(),
    };
    let report = crate::signal::until_stopped(crate::export::export(&job, &opts)).await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    let report = report?;
    if !global.quiet {
        print_report(&report, args.format);
    }
    Ok(ExitCode::Success)
}

pub fn print_report(r: &ExportReport, format: Format) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(r).expect("report serialises")
        ),
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
