//! `recon validate`: check a job file and, for a run date, its snapshots' schemas, and
//! with `--connect` its exporters' databases and APIs.

use std::path::PathBuf;

use chrono::NaiveDate;
use clap::Args;

use super::{GlobalArgs, LakeArgs};
use crate::error::{ExitCode, Result};
use crate::job::JobConfig;

#[derive(Debug, Args)]
#[command(mut_arg("lake", |a| a.help(
    "Read snapshots from this lake (URL or path) instead of the job's; the output shown \
     is then {lake}/recon/{job name}, as for `recon run --lake`"
)))]
pub struct ValidateArgs {
    /// The job file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    #[command(flatten)]
    pub lake: LakeArgs,
    /// Also open this run date's snapshots and check every column the job names.
    #[arg(long, value_parser = super::parse_date)]
    pub run_date: Option<NaiveDate>,
    /// Also check that each exporter's environment variables are set and its database
    /// or API answers (reads no data).
    #[arg(long)]
    pub connect: bool,
}

pub async fn run(args: ValidateArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let job = JobConfig::load(&args.job)?.relocated(args.lake.lake.as_deref(), None)?;
    let mut lines = vec![format!(
        "job {}: {} entities, {} → {}, output {}",
        job.name,
        job.entities.len(),
        job.source,
        job.replica,
        job.output
    )];
    match args.run_date {
        Some(date) => {
            for p in crate::run::prepare(&job, date, &[]).await? {
                let fields: Vec<String> = p
                    .plan
                    .fields
                    .iter()
                    .map(|f| {
                        format!(
                            "{}({})",
                            p.plan.field_column(f).source,
                            f.rule.owner.as_str()
                        )
                    })
                    .collect();
                lines.push(format!(
                    "  {}: {} + {} rows, key ({}), compared: {}",
                    p.plan.entity.name,
                    p.source.rows,
                    p.replica.rows,
                    p.plan.entity.key.join(", "),
                    if fields.is_empty() {
                        "none".into()
                    } else {
                        fields.join(", ")
                    }
                ));
                let o = &p.plan.one_sided;
                for (side, cols) in [("source", &o.source), ("replica", &o.replica)] {
                    if !cols.is_empty() {
                        lines.push(format!(
                            "  {}: not compared, in the {side} snapshot only: {}",
                            p.plan.entity.name,
                            cols.join(", ")
                        ));
                    }
                }
            }
            lines.push(format!("snapshots of {date}: ok"));
        }
        None => lines.push("snapshots not checked (pass --run-date to check them)".into()),
    }
    let mut failed = None;
    if args.connect {
        let checks = crate::export::connect::check(&job).await;
        if checks.is_empty() {
            lines.push("connections: the job has no exporters".into());
        }
        for c in checks {
            let outcome = match c.outcome {
                Ok(what) => what,
                Err(e) => {
                    let line = format!("FAILED: {e}");
                    failed.get_or_insert(e);
                    line
                }
            };
            lines.push(format!("  {} ({}): {outcome}", c.system, c.exporter));
        }
    } else {
        lines.push("connections not checked (pass --connect to check them)".into());
    }
    if !global.quiet {
        println!("{}", lines.join("\n"));
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::Success),
    }
}
