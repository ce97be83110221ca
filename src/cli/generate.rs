//! `recon generate`: write the sample lake (deterministic; larger with --scale).

use std::path::PathBuf;

use clap::Args;

use super::GlobalArgs;
use crate::error::{Error, ExitCode, Result};
use crate::generate::{SAMPLE_RUN_DATE, Sample};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The lake folder to write (snapshots/{system}/{entity}/run_date=…/part-00000.parquet).
    #[arg(long, default_value = "sample-data/lake")]
    pub out: PathBuf,
    /// Multiplies users, groups and memberships per tenant; planted discrepancies stay the same.
    #[arg(long, default_value_t = 1)]
    pub scale: i64,
}

pub async fn run(args: GenerateArgs, global: &GlobalArgs) -> Result<ExitCode> {
    if args.scale < 1 {
        return Err(Error::Usage(format!(
            "--scale must be at least 1, got {}",
            args.scale
        )));
    }
    Sample { scale: args.scale }.write(&args.out)?;
    if !global.quiet {
        println!(
            "wrote sample lake (scale {}) to {} for run date {SAMPLE_RUN_DATE}",
            args.scale,
            args.out.display()
        );
    }
    Ok(ExitCode::Success)
}
