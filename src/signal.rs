//! Stopping on a signal. A scheduler stops a task with SIGTERM (Airflow on a timeout or
//! when the task is marked failed), a terminal with SIGINT. A stage run under
//! [`until_stopped`] is dropped where it is when one arrives, and the caller cleans up
//! after it (its own uncommitted files, its lock): nothing is committed, and the
//! process exits 143 (SIGTERM) or 130 (SIGINT).

use std::future::Future;

use crate::error::{Error, Result};

/// Runs `work` until it ends or a stop signal arrives, which gives
/// [`Error::Interrupted`].
pub async fn until_stopped<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        result = work => result,
        signal = stop_signal() => Err(Error::Interrupted { signal }),
    }
}

/// The next SIGTERM or SIGINT (never, where they cannot be caught).
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            return tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
        }
    }
    std::future::pending().await
}
