//! `recon generate`: write the sample lake (deterministic; larger with --scale).

use std::path::PathBuf;

use clap::Args;

use super::GlobalArgs;
use crate::error::{Error, ExitCode, Result};
use crate::generate::{SAMPLE_RUN_DATE, Sample};

/// The largest `--scale`: about 25 million rows, more than a laptop wants.
const MAX_SCALE: i64 = 100_000;
/// The largest `--bench-rows`.
const MAX_BENCH_ROWS: u64 = 2_000_000_000;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The lake folder to write (snapshots/{system}/{entity}/run_date=…/part-00000.parquet).
    #[arg(long, default_value = "sample-data/lake")]
    pub out: PathBuf,
    /// Multiplies users, groups and memberships per tenant; planted discrepancies stay the same.
    #[arg(long, default_value_t = 1)]
    pub scale: i64,
    /// Instead of the sample lake, write a benchmark pair (left.parquet, right.parquet,
    /// expected.json) of this many rows: 12 columns, 1% changed, 0.5% missing each way.
    #[arg(long)]
    pub bench_rows: Option<u64>,
}

pub async fn run(args: GenerateArgs, global: &GlobalArgs) -> Result<ExitCode> {
    if let Some(rows) = args.bench_rows
        && !(1..=MAX_BENCH_ROWS).contains(&rows)
    {
        return Err(Error::Usage(format!(
            "--bench-rows must be from 1 to {MAX_BENCH_ROWS}, got {rows}"
        )));
    }
    if let Some(rows) = args.bench_rows {
        let expected = crate::generate::bench::write_pair(&args.out, rows)?;
        if !global.quiet {
            println!(
                "wrote benchmark pair of {rows} rows to {} (expected: {} missing, {} extra, {} mismatched fields)",
                args.out.display(),
                expected.missing_in_replica,
                expected.extra_in_replica,
                expected.field_mismatch
            );
        }
        return Ok(ExitCode::Success);
    }
    if !(1..=MAX_SCALE).contains(&args.scale) {
        return Err(Error::Usage(format!(
            "--scale must be from 1 to {MAX_SCALE}, got {}",
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
