//! `recon apply`: apply a committed run's corrections for one system to its database.

use clap::Args;

use super::{EntityArgs, Format, FormatArgs, GlobalArgs, JobArgs, LockArgs, OutputArgs};
use crate::apply::{ApplyOptions, ApplySummary};
use crate::error::{Error, ExitCode, Result};
use crate::job::JobConfig;
use crate::job::exporters::ExporterKind;
use crate::run::LockMode;

#[derive(Debug, Args)]
#[command(
    mut_arg("run_date", |a| a.help("The run date whose committed run to apply (YYYY-MM-DD)")),
    mut_arg("entities", |a| a.help("Apply only this entity (repeatable)")),
    mut_arg("output", |a| a.help("Read runs from this output prefix (URL or path) instead of the job's")),
    mut_arg("format", |a| a.help("How to print the apply summary on stdout")),
)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// The run to apply (default: the run date's latest committed run).
    #[arg(long = "run")]
    pub run_id: Option<String>,
    /// The system whose database is corrected (it needs a postgres or mysql exporter).
    #[arg(long)]
    pub system: String,
    #[command(flatten)]
    pub entities: EntityArgs,
    /// Print the statements and how many rows each would touch; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply a run whose guardrail tripped: the entities it did not withhold.
    #[arg(long)]
    pub allow_guardrail_tripped: bool,
    /// Corrections per transaction.
    #[arg(long, default_value_t = crate::apply::DEFAULT_BATCH_ROWS)]
    pub batch_rows: usize,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub lock: LockArgs,
}

/// An apply as the command line asks for it: the job with `--output` in place, the
/// system, entities and run id checked against it, before anything touches a store or
/// a database; never changed after.
#[derive(Debug)]
pub struct ApplyConfig {
    pub job: JobConfig,
    /// What to apply (its `lock` is the one taken when the apply starts).
    pub options: ApplyOptions,
    /// A dry run writes nothing and takes no lock.
    pub lock: LockMode,
    pub format: Format,
}

impl ApplyConfig {
    /// Loads the job and checks `--system`, `--entity` and `--run` against it.
    pub fn try_new(args: ApplyArgs) -> Result<Self> {
        let job = JobConfig::load(&args.job.job)?.relocated(None, args.output.output.as_deref())?;
        let system = &args.system;
        job.check_system(system)?;
        job.check_entities(&args.entities.entities)?;
        match job.exporters.get(system).map(|e| &e.kind) {
            Some(ExporterKind::Postgres { .. } | ExporterKind::Mysql { .. }) => {}
            Some(other) => {
                return Err(Error::Usage(format!(
                    "system `{system}` is exported with kind = \"{}\"; apply needs a postgres or mysql database",
                    other.name()
                )));
            }
            None => {
                return Err(Error::Usage(format!(
                    "system `{system}` has no [exporters.{system}] table: apply connects through the exporter's url_env (kind postgres or mysql)"
                )));
            }
        }
        if let Some(id) = &args.run_id {
            crate::run::check_run_id(id)?;
        }
        Ok(ApplyConfig {
            job,
            options: ApplyOptions {
                run_date: args.job.run_date,
                run_id: args.run_id,
                system: args.system,
                entities: args.entities.entities,
                dry_run: args.dry_run,
                allow_guardrail_tripped: args.allow_guardrail_tripped,
                batch_rows: args.batch_rows,
                lock: None,
            },
            lock: if args.dry_run {
                LockMode::Disabled
            } else {
                args.lock.mode()
            },
            format: args.format.format,
        })
    }
}

pub async fn run(args: ApplyArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let config = ApplyConfig::try_new(args)?;
    // The run date's lock, as `run` and `export` take it: an apply never overlaps a run
    // or another apply of the same date.
    let lock = super::take_lock(&config.job, config.options.run_date, config.lock, "apply").await?;
    let opts = ApplyOptions {
        lock: lock.clone(),
        ..config.options.clone()
    };
    // On a stop signal the open transaction is rolled back by the database when the
    // connection drops; what was committed before is found `already_applied` next time.
    let summary = crate::signal::until_stopped(crate::apply::apply(&config.job, &opts)).await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    let summary = summary?;
    let exit = if summary.dry_run || summary.total("stale") + summary.total("failed") == 0 {
        ExitCode::Success
    } else {
        ExitCode::Partial
    };
    if !global.quiet {
        print(&summary, exit, config.format);
    }
    Ok(exit)
}

fn print(s: &ApplySummary, exit: ExitCode, format: Format) {
    match format {
        Format::Json => {
            /// The summary with its outcomes summed over entities and ops.
            #[derive(serde::Serialize)]
            struct WithTotals<'a> {
                totals: std::collections::BTreeMap<&'a str, u64>,
                #[serde(flatten)]
                summary: &'a ApplySummary,
            }
            let mut totals = std::collections::BTreeMap::new();
            for outcome in s.counts.values().flat_map(|ops| ops.values()) {
                for (name, n) in outcome {
                    *totals.entry(name.as_str()).or_default() += n;
                }
            }
            super::print::print_json(exit, &WithTotals { totals, summary: s });
        }
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
