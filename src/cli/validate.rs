//! `recon validate`: check a job file and, for a run date, its snapshots' schemas.

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
            }
            lines.push(format!("snapshots of {date}: ok"));
        }
        None => lines.push("snapshots not checked (pass --run-date to check them)".into()),
    }
    if !global.quiet {
        println!("{}", lines.join("\n"));
    }
    Ok(ExitCode::Success)
}
