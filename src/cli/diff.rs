//! `recon diff`: an ad-hoc diff of two snapshots without a job file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::NaiveDate;
use clap::Args;

use super::print::NextSteps;
use super::run::RunConfig;
use super::{GlobalArgs, LockArgs, RunControlArgs, SummaryArgs};
use crate::error::{Error, ExitCode, Result};
use crate::job::{DeletePolicy, EntityConfig, JobConfig, check_name};

/// An ad-hoc diff writes every correction unless `--max-correction-share` says otherwise.
const DIFF_MAX_CORRECTION_SHARE: f64 = 1.0;

#[derive(Debug, Args)]
#[command(
    mut_arg("max_correction_share", |a| a.help(
        "Guardrail share (0..1); an ad-hoc diff writes every correction by default"
    )),
    mut_arg("format", |a| a.help("How to print the run summary on stdout")),
)]
pub struct DiffArgs {
    /// The source snapshot: a Parquet file or a folder/prefix of them (URL or path).
    #[arg(long)]
    pub left: String,
    /// The replica snapshot, compared against the left one.
    #[arg(long)]
    pub right: String,
    /// Key columns, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub key: Vec<String>,
    /// Where to write the outputs (URL or path).
    #[arg(long, default_value = "recon-output")]
    pub output: String,
    /// Entity name used in the outputs.
    #[arg(long, default_value = "table")]
    pub entity: String,
    /// Run date stamped on the outputs (default: today, UTC).
    #[arg(long, value_parser = super::parse_date)]
    pub run_date: Option<NaiveDate>,
    #[command(flatten)]
    pub control: RunControlArgs,
    #[command(flatten)]
    pub format: SummaryArgs,
    #[command(flatten)]
    pub lock: LockArgs,
}

impl RunConfig {
    /// The run of an ad-hoc diff: a job of one entity made from the arguments (all
    /// fields exact, left is the source, deletes hard), checked like a job file.
    pub fn try_from_diff(args: DiffArgs, global: &GlobalArgs) -> Result<Self> {
        let cwd = std::path::Path::new(".");
        let url = |s: &str| crate::store::resolve_url(s, cwd);
        let entity = check_name(&args.entity).map_err(Error::Usage)?;
        let key: Vec<String> = args
            .key
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        if key.is_empty() {
            return Err(Error::Usage("--key needs at least one column".into()));
        }
        let run_date = args
            .run_date
            .unwrap_or_else(|| chrono::Utc::now().date_naive());
        // The share is the entity's own, as a job file's would be.
        let max_correction_share = args
            .control
            .max_correction_share
            .unwrap_or(DIFF_MAX_CORRECTION_SHARE);
        crate::job::check_share(max_correction_share, "--max-correction-share")
            .map_err(Error::Usage)?;
        let control = RunControlArgs {
            max_correction_share: None,
            ..args.control
        };
        let options = control.options(global, run_date, vec![], args.lock.mode(), false)?;
        let job = JobConfig {
            path: PathBuf::from("<recon diff>"),
            name: "diff".into(),
            lake: url(&args.output)?,
            output: url(&args.output)?,
            source: "left".into(),
            replica: "right".into(),
            exporters: BTreeMap::new(),
            entities: vec![EntityConfig {
                name: entity,
                line: 0,
                key,
                depends_on: vec![],
                deletes: DeletePolicy::Hard,
                fields: BTreeMap::new(),
                rename: BTreeMap::new(),
                exports: BTreeMap::new(),
                version: None,
                source_snapshot: Some(url(&args.left)?),
                replica_snapshot: Some(url(&args.right)?),
                max_correction_share,
                max_row_drop: 1.0,
            }],
        };
        Ok(RunConfig {
            job,
            options,
            format: args.format.format,
            list_inputs: args.format.list_inputs,
            next: NextSteps::default(),
        })
    }
}

pub async fn run(args: DiffArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let config = RunConfig::try_from_diff(args, global)?;
    super::run::run_config(&config, global).await
}
