//! The command line: one module per subcommand, each owning its arguments and `run`.

pub mod diff;
pub mod generate;
pub mod run;
pub mod validate;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::error::{ExitCode, Result};

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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reconcile every entity of a job for one run date and commit the outputs.
    Run(run::RunArgs),
    /// Diff two snapshots ad hoc, without a job file (all fields exact, left is the source).
    Diff(diff::DiffArgs),
    /// Check a job file, and with --run-date the snapshots' schemas, without diffing.
    Validate(validate::ValidateArgs),
    /// Write the sample lake (or a larger one for benchmarks); deterministic.
    Generate(generate::GenerateArgs),
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
    pub fn mode(&self) -> crate::run::LockMode {
        if self.no_lock {
            crate::run::LockMode::Disabled
        } else {
            crate::run::LockMode::Required {
                ttl: std::time::Duration::from_secs(self.lock_ttl_secs),
            }
        }
    }
}

/// How results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table for people.
    Text,
    /// The run summary as JSON.
    Json,
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

pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args, &cli.global).await,
        Command::Diff(args) => diff::run(args, &cli.global).await,
        Command::Validate(args) => validate::run(args, &cli.global).await,
        Command::Generate(args) => generate::run(args, &cli.global).await,
    }
}

/// Parses a YYYY-MM-DD date argument.
pub fn parse_date(s: &str) -> std::result::Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("`{s}` is not a date in YYYY-MM-DD form"))
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
