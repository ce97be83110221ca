//! The command line: one module per subcommand, each owning its arguments and `run`.

pub mod apply;
pub mod args;
pub mod diff;
pub mod export;
pub mod generate;
pub mod print;
pub mod run;
pub mod validate;

use std::sync::Arc;

use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

pub use args::{
    EntityArgs, FormatArgs, JobArgs, LakeArgs, LockArgs, OutputArgs, RunControlArgs, SummaryArgs,
};

use crate::error::{Error, ExitCode, Result};
use crate::job::JobConfig;
use crate::lock::{HeldLock, RunLock};
use crate::run::LockMode;

/// Reconcile two systems through data-lake snapshots.
#[derive(Debug, Parser)]
#[command(name = "recon", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Log level for messages on stderr (RUST_LOG, when set, overrides it).
    #[arg(long, global = true, default_value = "warn", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: String,
    /// Print nothing on stdout; the exit code and the outputs tell the result.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Memory the diff may hold before it spills to disk, e.g. `4GiB`, `512MiB` (default:
    /// 60% of the machine's memory).
    #[arg(long, global = true, value_parser = parse_bytes)]
    pub memory_limit: Option<usize>,
}

impl GlobalArgs {
    /// Stage progress on stderr: only on a terminal, never with --quiet.
    pub fn progress(&self) -> bool {
        !self.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())
    }

    pub fn memory_limit(&self) -> usize {
        self.memory_limit.unwrap_or_else(default_memory_limit)
    }
}

/// 60% of MemTotal from /proc/meminfo, or 4 GiB where that cannot be read.
pub fn default_memory_limit() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<usize>().ok())
        })
        .map(|kb| kb * 1024 / 10 * 6)
        .unwrap_or(4 << 30)
}

/// Parses `123`, `64KiB`, `512MiB`, `4GiB` (also KB/MB/GB as powers of 1024).
pub fn parse_bytes(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 4GiB"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("`{s}` has an unknown unit (use KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .filter(|b| *b >= 64 << 20)
        .ok_or_else(|| format!("`{s}` must be at least 64MiB"))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reconcile every entity of a job for one run date and commit the outputs (exporting
    /// first when the job declares exporters).
    Run(run::RunArgs),
    /// Export the job's systems to Parquet snapshots for one run date, without diffing.
    Export(export::ExportArgs),
    /// Apply a committed run's corrections for one system to its database.
    Apply(apply::ApplyArgs),
    /// Diff two snapshots ad hoc, without a job file (all fields exact, left is the source).
    Diff(diff::DiffArgs),
    /// Check a job file, and with --run-date the snapshots' schemas, without diffing.
    Validate(validate::ValidateArgs),
    /// Write the sample lake (or a larger one for benchmarks); deterministic.
    Generate(generate::GenerateArgs),
}

/// How results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table for people.
    Text,
    /// The same, as JSON for programs.
    Json,
}

/// The run date's lock for `export` and `apply`, taken as `recon run` takes its own, so
/// that none of them overlaps another of the same job and date; `holder` starts the
/// lock's run id (`export`, `apply`). `None` under `--no-lock`.
pub async fn take_lock(
    job: &JobConfig,
    run_date: NaiveDate,
    mode: LockMode,
    holder: &str,
) -> Result<Option<Arc<HeldLock>>> {
    let LockMode::Required { ttl } = mode else {
        return Ok(None);
    };
    let output = crate::store::open(&job.output)?;
    if !crate::lock::probe(&output).await? {
        return Err(Error::NoConditionalWrites { url: output.url() });
    }
    let id = format!("{holder}-{}", crate::run::new_run_id(chrono::Utc::now()));
    let lock = RunLock::acquire(&output, &job.name, run_date, &id, ttl).await?;
    Ok(Some(Arc::new(lock.keep())))
}

pub fn init_tracing(global: &GlobalArgs) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("recon={0},warn", global.log_level)));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

impl Command {
    /// Whether the command prints JSON on stdout (`--format json`).
    fn prints_json(&self) -> bool {
        let format = match self {
            Command::Run(a) => a.format.format,
            Command::Diff(a) => a.format.format,
            Command::Export(a) => a.format.format,
            Command::Apply(a) => a.format.format,
            Command::Validate(_) | Command::Generate(_) => Format::Text,
        };
        format == Format::Json
    }
}

/// Runs the command. Under `--format json` a failure also prints an error object on
/// stdout (the message goes to stderr as always), so that a program reading stdout
/// always gets one JSON line.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    let json = cli.command.prints_json() && !cli.global.quiet;
    let result = match cli.command {
        Command::Run(args) => run::run(args, &cli.global).await,
        Command::Export(args) => export::run(args, &cli.global).await,
        Command::Apply(args) => apply::run(args, &cli.global).await,
        Command::Diff(args) => diff::run(args, &cli.global).await,
        Command::Validate(args) => validate::run(args, &cli.global).await,
        Command::Generate(args) => generate::run(args, &cli.global).await,
    };
    if json && let Err(e) = &result {
        println!("{}", print::error_json(e));
    }
    result
}

/// Parses a YYYY-MM-DD date argument.
pub fn parse_date(s: &str) -> std::result::Result<chrono::NaiveDate, String> {
    // Exactly YYYY-MM-DD: chrono alone reads `24-06-01` as the year 24.
    let shape = s.len() == 10
        && s.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    shape
        .then(|| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        .flatten()
        .ok_or_else(|| format!("`{s}` is not a date in YYYY-MM-DD form (e.g. 2024-06-01)"))
}

/// Threads DataFusion may use: all cores unless RECON_THREADS says otherwise.
pub fn target_partitions() -> usize {
    std::env::var("RECON_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand's arguments, flattened and reworded, make a consistent command.
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
