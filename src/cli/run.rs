//! `recon run`: reconcile a job for one run date.

use std::path::PathBuf;

use chrono::NaiveDate;
use clap::Args;

use super::{Format, GlobalArgs};
use crate::error::{ExitCode, Result};
use crate::job::JobConfig;
use crate::run::{RunOptions, RunSummary};
use crate::write::vocabulary::Kind;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    /// The run date: which night's snapshots to reconcile (YYYY-MM-DD).
    #[arg(long, value_parser = super::parse_date)]
    pub run_date: NaiveDate,
    /// Run id to use instead of a new one (letters, digits, `-`, `_`, `.`), e.g. the scheduler's.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Reconcile only this entity (repeatable).
    #[arg(long = "entity")]
    pub entities: Vec<String>,
    /// Override the guardrail: the largest share (0..1) of an entity's rows corrections may touch.
    #[arg(long)]
    pub max_correction_share: Option<f64>,
    /// Read snapshots from this lake instead of the job's (URL or path).
    #[arg(long)]
    pub lake: Option<String>,
    /// Write outputs here instead of the job's output prefix (URL or path).
    #[arg(long)]
    pub output: Option<String>,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Diff the snapshots already in the lake without running the job's exporters first.
    #[arg(long)]
    pub no_export: bool,
    #[command(flatten)]
    pub lock: super::LockArgs,
    /// Which key-summary plan to start from: auto, merge, join or aggregation (tests).
    #[arg(long, hide = true, default_value = "auto")]
    pub key_plan: crate::diff::plan::KeyPlan,
}

pub async fn run(args: RunArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let mut job = JobConfig::load(&args.job)?;
    if let Some(lake) = &args.lake {
        job.lake = crate::store::resolve_url(lake, std::path::Path::new("."))?;
    }
    if let Some(output) = &args.output {
        job.output = crate::store::resolve_url(output, std::path::Path::new("."))?;
    }
    if let Some(s) = args.max_correction_share
        && !(0.0..=1.0).contains(&s)
    {
        return Err(crate::Error::Usage(format!(
            "--max-correction-share must be between 0 and 1, got {s}"
        )));
    }
    let opts = RunOptions {
        run_date: args.run_date,
        run_id: args.run_id,
        entities: args.entities,
        max_correction_share: args.max_correction_share,
        target_partitions: super::target_partitions(),
        memory_limit: global.memory_limit(),
        lock: args.lock.mode(),
        progress: global.progress(),
        export: !args.no_export,
        key_plan: args.key_plan,
    };
    let outcome = crate::run::run(&job, &opts).await?;
    if !global.quiet {
        print_summary(&outcome.summary, args.format);
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
