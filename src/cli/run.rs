//! `recon run`: reconcile a job for one run date.

use clap::Args;

use super::{EntityArgs, Format, FormatArgs, GlobalArgs, JobArgs, LakeArgs, OutputArgs};
use super::{LockArgs, RunControlArgs};
use crate::error::{Error, ExitCode, Result};
use crate::job::JobConfig;
use crate::run::{RunOptions, RunSummary};
use crate::write::vocabulary::Kind;

#[derive(Debug, Args)]
#[command(
    mut_arg("run_date", |a| a.help("The run date: which night's snapshots to reconcile (YYYY-MM-DD)")),
    mut_arg("entities", |a| a.help("Reconcile only this entity (repeatable)")),
    mut_arg("lake", |a| a.help(
        "Read snapshots from this lake (URL or path) instead of the job's; without \
         --output, the outputs and the run-date lock go to {lake}/recon/{job name}"
    )),
    mut_arg("output", |a| a.help("Write outputs here (URL or path) instead of the job's output prefix")),
    mut_arg("format", |a| a.help("How to print the run summary on stdout")),
)]
pub struct RunArgs {
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub entities: EntityArgs,
    #[command(flatten)]
    pub control: RunControlArgs,
    #[command(flatten)]
    pub lake: LakeArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub format: FormatArgs,
    /// Diff the snapshots already in the lake without running the job's exporters first.
    #[arg(long)]
    pub no_export: bool,
    #[command(flatten)]
    pub lock: LockArgs,
}

/// A run (or an ad-hoc diff, [`RunConfig::try_from_diff`]) as the command line asks for
/// it: the job with `--lake` and `--output` in place, the run's options and how to
/// print its summary. Built in one step from the arguments and the validated job,
/// before anything touches a store, and never changed after.
#[derive(Debug)]
pub struct RunConfig {
    pub job: JobConfig,
    pub options: RunOptions,
    pub format: Format,
}

impl RunConfig {
    /// Loads the job and checks every argument against it: `--entity`, `--run-id` and
    /// `--max-correction-share`.
    pub fn try_new(args: RunArgs, global: &GlobalArgs) -> Result<Self> {
        let job = JobConfig::load(&args.job.job)?
            .relocated(args.lake.lake.as_deref(), args.output.output.as_deref())?;
        job.check_entities(&args.entities.entities)?;
        let options = args.control.options(
            global,
            args.job.run_date,
            args.entities.entities,
            args.lock.mode(),
            !args.no_export,
        )?;
        Ok(RunConfig {
            job,
            options,
            format: args.format.format,
        })
    }
}

impl RunControlArgs {
    /// The options of a run, with its run id and guardrail share checked.
    pub fn options(
        self,
        global: &GlobalArgs,
        run_date: chrono::NaiveDate,
        entities: Vec<String>,
        lock: crate::run::LockMode,
        export: bool,
    ) -> Result<RunOptions> {
        if let Some(id) = &self.run_id {
            crate::run::check_run_id(id)?;
        }
        if let Some(share) = self.max_correction_share {
            crate::job::check_share(share, "--max-correction-share").map_err(Error::Usage)?;
        }
        Ok(RunOptions {
            run_date,
            run_id: self.run_id,
            entities,
            max_correction_share: self.max_correction_share,
            target_partitions: super::target_partitions(),
            memory_limit: global.memory_limit(),
            lock,
            progress: global.progress(),
            export,
            key_plan: self.key_plan,
        })
    }
}

pub async fn run(args: RunArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let config = RunConfig::try_new(args, global)?;
    run_config(&config, global).await
}

/// Runs a checked run or diff and prints its summary.
pub async fn run_config(config: &RunConfig, global: &GlobalArgs) -> Result<ExitCode> {
    let outcome = crate::run::run(&config.job, &config.options).await?;
    if !global.quiet {
        print_summary(&outcome.summary, config.format);
    }
    Ok(outcome.exit)
}

pub fn print_summary(s: &RunSummary, format: Format) {
    match format {
        Format::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(s).expect("summary serialises")
            );
        }
        Format::Text => println!("{}", render_text(s)),
    }
}

/// The summary as a table: one line per entity.
pub fn render_text(s: &RunSummary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "job {} run_date {} run_id {} status {}",
        s.job, s.run_date, s.run_id, s.status
    );
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>9} {:>8} {:>8} {:>9} {:>6} {:>6} {:>12}  guardrail",
        "entity", "source", "replica", "missing", "extra", "mismatch", "dup", "null", "corrections"
    );
    for e in &s.entities {
        let kind = |k: Kind| -> u64 {
            e.counts
                .iter()
                .filter(|c| c.kind == k)
                .map(|c| c.count)
                .sum()
        };
        let verdict = match &e.guardrail.reason {
            Some(r) => format!("TRIPPED: {r}"),
            None => "ok".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>9} {:>8} {:>8} {:>9} {:>6} {:>6} {:>12}  {}",
            e.entity,
            e.rows.source,
            e.rows.replica,
            kind(Kind::MissingInReplica),
            kind(Kind::ExtraInReplica),
            kind(Kind::FieldMismatch),
            kind(Kind::DuplicateKey),
            kind(Kind::NullKey),
            e.guardrail.corrections,
            verdict
        );
    }
    let _ = writeln!(out, "outputs:  {}", s.output);
    let _ = write!(out, "manifest: {}", s.manifest);
    out
}
