//! The `recon` binary: parse arguments, set up tracing, run, map the outcome to an exit code.

use std::process::ExitCode as ProcessExit;

use clap::Parser;

/// mimalloc rather than the system allocator: the queries allocate and free many
/// short-lived buffers from several threads, which it serves with fewer page faults.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for this process, on Linux. mimalloc returns freed
/// memory to the system in pieces smaller than a huge page, and the kernel splits a
/// huge page (and, on a fault, zeroes or compacts one) each time: on the 20M-row
/// benchmark pair (2 cores) that was 1.0–1.9 s of system time against 0.7 s without,
/// and about 8% of the wall time. The process's later page faults then take 4 KiB
/// pages.
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes plain integers and only sets a flag of
    // this process; a failure (an old kernel) leaves things as they were.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ProcessExit {
    without_huge_pages();
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
