//! `recon run`: reconcile a job for one run date.

use clap::Args;

use super::print::{NextSteps, print_summary};
use super::{EntityArgs, Format, GlobalArgs, JobArgs, LakeArgs, OutputArgs, SummaryArgs};
use super::{LockArgs, RunControlArgs};
use crate::error::{Error, ExitCode, Result};
use crate::job::JobConfig;
use crate::job::exporters::ExporterKind;
use crate::run::RunOptions;

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
    pub format: SummaryArgs,
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
    /// `--list-inputs`: the JSON summary lists each snapshot's files.
    pub list_inputs: bool,
    /// How to reach the run again, for the summary's "next" lines.
    pub next: NextSteps,
}

impl RunConfig {
    /// Loads the job and checks every argument against it: `--entity`, `--run-id` and
    /// `--max-correction-share`.
    pub fn try_new(args: RunArgs, global: &GlobalArgs) -> Result<Self> {
        let moved = args.lake.lake.is_some() || args.output.output.is_some();
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
        let next = NextSteps {
            job: Some(args.job.job.display().to_string()),
            output: moved.then(|| job.output.clone()),
            appliable: job
                .exporters
                .values()
                .filter(|e| {
                    matches!(
                        e.kind,
                        ExporterKind::Postgres { .. } | ExporterKind::Mysql { .. }
                    )
                })
                .map(|e| e.system.clone())
                .collect(),
        };
        Ok(RunConfig {
            job,
            options,
            format: args.format.format,
            list_inputs: args.format.list_inputs,
            next,
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
        print_summary(
            outcome.summary,
            outcome.exit,
            config.format,
            config.list_inputs,
            &config.next,
        );
    }
    Ok(outcome.exit)
}
