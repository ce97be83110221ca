//! `recon apply`: apply a committed run's corrections for one system to its database.

use std::path::PathBuf;

use chrono::NaiveDate;
use clap::Args;

use super::{Format, GlobalArgs};
use crate::apply::{ApplyOptions, ApplySummary};
use crate::error::{ExitCode, Result};
use crate::job::JobConfig;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The job file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    /// The run date whose committed run to apply (YYYY-MM-DD).
    #[arg(long, value_parser = super::parse_date)]
    pub run_date: NaiveDate,
    /// The run to apply (default: the run date's latest committed run).
    #[arg(long = "run")]
    pub run_id: Option<String>,
    /// The system whose database is corrected (it needs a postgres or mysql exporter).
    #[arg(long)]
    pub system: String,
    /// Apply only this entity (repeatable).
    #[arg(long = "entity")]
    pub entities: Vec<String>,
    /// Print the statements and how many rows each would touch; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply a run whose guardrail tripped: the entities it did not withhold.
    #[arg(long)]
    pub allow_guardrail_tripped: bool,
    /// Corrections per transaction.
    #[arg(long, default_value_t = crate::apply::DEFAULT_BATCH_ROWS)]
    pub batch_rows: usize,
    /// Read runs from this output prefix instead of the job's (URL or path).
    #[arg(long)]
    pub output: Option<String>,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub lock: super::LockArgs,
}

pub async fn run(args: ApplyArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let mut job = JobConfig::load(&args.job)?;
    if let Some(output) = &args.output {
        job.output = crate::store::resolve_url(output, std::path::Path::new("."))?;
    }
    // The run date's lock, as `run` and `export` take it: an apply never overlaps a run
    // or another apply of the same date. A dry run writes nothing and takes none.
    let lock = match args.lock.mode() {
        crate::run::LockMode::Required { ttl } if !args.dry_run => {
            let output = crate::store::open(&job.output)?;
            if !crate::lock::probe(&output).await? {
                return Err(crate::error::Error::NoConditionalWrites { url: output.url() });
            }
            let id = format!("apply-{}", crate::run::new_run_id(chrono::Utc::now()));
            let lock =
                crate::lock::RunLock::acquire(&output, &job.name, args.run_date, &id, ttl).await?;
            Some(std::sync::Arc::new(lock.keep()))
        }
        _ => None,
    };
    let opts = ApplyOptions {
        run_date: args.run_date,
        run_id: args.run_id,
        system: args.system,
        entities: args.entities,
        dry_run: args.dry_run,
        allow_guardrail_tripped: args.allow_guardrail_tripped,
        batch_rows: args.batch_rows,
        lock: lock.clone(),
    };
    // On a stop signal the open transaction is rolled back by the database when the
    // connection drops; what was committed before is found `already_applied` next time.
    let summary = crate::signal::until_stopped(crate::apply::apply(&job, &opts)).await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    let summary = summary?;
    if !global.quiet {
        print(&summary, args.format);
    }
    Ok(
        if summary.dry_run || summary.total("stale") + summary.total("failed") == 0 {
            ExitCode::Success
        } else {
            ExitCode::Partial
        },
    )
}

fn print(s: &ApplySummary, format: Format) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(s).expect("summary serialises")
        ),
        Format::Text => {
            println!(
                "apply {} of run {} ({}) to {}{}",
                s.apply_id,
                s.run_id,
                s.run_date,
                s.system,
                if s.dry_run {
                    " (dry run: nothing written)"
                } else {
                    ""
                }
            );
            for stmt in &s.statements {
                println!("{stmt}");
            }
            println!(
                "{:<16} {:<12} {:>8} {:>8} {:>16} {:>8} {:>12}",
                "entity", "op", "applied", "stale", "already_applied", "failed", "would_apply"
            );
            for (entity, ops) in &s.counts {
                for (op, o) in ops {
                    let n = |k: &str| o.get(k).copied().unwrap_or(0);
                    println!(
                        "{:<16} {:<12} {:>8} {:>8} {:>16} {:>8} {:>12}",
                        entity,
                        op,
                        n("applied"),
                        n("stale"),
                        n("already_applied"),
                        n("failed"),
                        n("would_apply")
                    );
                }
            }
            if let Some(r) = &s.report {
                println!("report: {r}");
            }
        }
    }
}
