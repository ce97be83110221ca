//! The `recon` binary: parse arguments, set up tracing, run, map the outcome to an exit code.

use std::process::ExitCode as ProcessExit;

use clap::Parser;

/// mimalloc rather than the system allocator: the queries allocate and free many
/// short-lived buffers from several threads, which it serves with fewer page faults.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ProcessExit {
    let cli = recon::cli::Cli::parse();
    recon::cli::init_tracing(&cli.global);
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error (a bug in recon): {info}");
        std::process::exit(recon::ExitCode::Internal as i32);
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ProcessExit::from(recon::ExitCode::Internal as u8);
        }
    };
    let code = match runtime.block_on(recon::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    ProcessExit::from(code as u8)
}
