//! Arguments several subcommands share, each flattened into the subcommand's own struct
//! (`#[command(flatten)]`). Where a subcommand means something more precise, it words
//! the help itself with `#[command(mut_arg(…))]`.

use std::path::PathBuf;

use chrono::NaiveDate;
use clap::Args;

use super::{Format, parse_date};
use crate::run::LockMode;

/// The job file and the run date (`run`, `export`, `apply`).
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    /// The run date (YYYY-MM-DD).
    #[arg(long, value_parser = parse_date)]
    pub run_date: NaiveDate,
}

/// Another lake than the job file's (`run`, `export`, `validate`).
#[derive(Debug, Args)]
pub struct LakeArgs {
    /// Use this lake (URL or path) instead of the job's; the outputs and the run-date
    /// lock move with it, to {lake}/recon/{job name}.
    #[arg(long)]
    pub lake: Option<String>,
}

/// Another output prefix than the job file's (`run`, `apply`).
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Use this output prefix (URL or path) instead of the job's.
    #[arg(long)]
    pub output: Option<String>,
}

/// The entities to work on (`run`, `export`, `apply`).
#[derive(Debug, Args)]
pub struct EntityArgs {
    /// Only this entity (repeatable; default: every entity of the job).
    #[arg(long = "entity")]
    pub entities: Vec<String>,
}

/// How one run is stamped and guarded (`run`, `diff`).
#[derive(Debug, Args)]
pub struct RunControlArgs {
    /// Run id to use instead of a new one (1 to 64 letters, digits, `-`, `_`, `.`), e.g. the scheduler's.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Override the guardrail: the largest share (0 to 1) of an entity's keys the corrections to one system may touch.
    #[arg(long)]
    pub max_correction_share: Option<f64>,
    /// Which key-summary plan to start from: auto, merge, join or aggregation (tests).
    #[arg(long, hide = true, default_value = "auto")]
    pub key_plan: crate::diff::plan::KeyPlan,
}

/// How the result is printed on stdout (`export`, `apply`).
#[derive(Debug, Args)]
pub struct FormatArgs {
    /// How to print the result on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// How a run's summary is printed on stdout (`run`, `diff`).
#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// How to print the run summary on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// With --format json, also list each snapshot's files (they are always in the
    /// run's summary.json).
    #[arg(long)]
    pub list_inputs: bool,
}

/// The run-date lock (one run at a time per job and run date).
#[derive(Debug, Args)]
pub struct LockArgs {
    /// Run without the lock: only when the scheduler already guarantees one run at a time,
    /// or the store ignores conditional writes.
    #[arg(long)]
    pub no_lock: bool,
    /// Lifetime of the lock in seconds; after it, another run may take over a crashed run's lock.
    #[arg(long, default_value_t = crate::lock::DEFAULT_TTL_SECS)]
    pub lock_ttl_secs: u64,
}

impl LockArgs {
    pub fn mode(&self) -> LockMode {
        if self.no_lock {
            LockMode::Disabled
        } else {
            LockMode::Required {
                ttl: std::time::Duration::from_secs(self.lock_ttl_secs),
            }
        }
    }
}
