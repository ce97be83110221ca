//! `recon diff`: an ad-hoc diff of two snapshots without a job file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::NaiveDate;
use clap::Args;

use super::{Format, GlobalArgs};
use crate::error::{Error, ExitCode, Result};
use crate::job::{DeletePolicy, EntityConfig, JobConfig, check_name};
use crate::run::RunOptions;

#[derive(Debug, Args)]
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
    /// Run id to use instead of a new one.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Guardrail share; an ad-hoc diff writes every correction by default.
    #[arg(long, default_value_t = 1.0)]
    pub max_correction_share: f64,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub lock: super::LockArgs,
    /// Which key-summary plan to start from: auto, merge, join or aggregation (tests).
    #[arg(long, hide = true, default_value = "auto")]
    pub key_plan: crate::diff::plan::KeyPlan,
}

pub async fn run(args: DiffArgs, global: &GlobalArgs) -> Result<ExitCode> {
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
    if !(0.0..=1.0).contains(&args.max_correction_share) {
        return Err(Error::Usage(format!(
            "--max-correction-share must be between 0 and 1, got {}",
            args.max_correction_share
        )));
    }
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
            max_correction_share: args.max_correction_share,
            max_row_drop: 1.0,
        }],
    };
    let opts = RunOptions {
        run_date: args
            .run_date
            .unwrap_or_else(|| chrono::Utc::now().date_naive()),
        run_id: args.run_id,
        entities: vec![],
        max_correction_share: None,
        target_partitions: super::target_partitions(),
        memory_limit: global.memory_limit(),
        lock: args.lock.mode(),
        progress: global.progress(),
        export: false,
        key_plan: args.key_plan,
    };
    let outcome = crate::run::run(&job, &opts).await?;
    if !global.quiet {
        super::run::print_summary(&outcome.summary, args.format);
    }
    Ok(outcome.exit)
}
