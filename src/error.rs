//! The library's error type and the one mapping from an error to a process exit code.
//! Every variant names what failed: the file, entity, column, URL or query.

use std::path::PathBuf;

use datafusion::error::DataFusionError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error kept as the source of one of ours, whatever library it came from.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Process exit codes, documented in the README. Schedulers branch on these.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// The run completed and committed its outputs (discrepancies may exist).
    Success = 0,
    /// Bad command line or job file: fix the invocation, do not retry.
    Usage = 2,
    /// A guardrail withheld corrections; discrepancies were written and the run committed.
    Guardrail = 3,
    /// The input snapshots are unusable (missing, corrupt, wrong schema).
    InputData = 4,
    /// The object store or network failed: retrying later may succeed.
    Storage = 5,
    /// Another run of the same job and run date holds the lock.
    Locked = 6,
    /// `recon apply` finished, but some corrections were stale or failed.
    Partial = 7,
    /// A bug in recon.
    Internal = 70,
    /// Stopped by SIGINT (Ctrl-C): nothing committed, the lock released.
    Interrupted = 130,
    /// Stopped by SIGTERM (a scheduler's timeout or kill): nothing committed, the lock
    /// released.
    Terminated = 143,
}

impl ExitCode {
    /// The code's name in JSON output (`--format json`'s error object).
    pub const fn as_str(self) -> &'static str {
        match self {
            ExitCode::Success => "success",
            ExitCode::Usage => "usage",
            ExitCode::Guardrail => "guardrail",
            ExitCode::InputData => "input_data",
            ExitCode::Storage => "storage",
            ExitCode::Locked => "locked",
            ExitCode::Partial => "partial",
            ExitCode::Internal => "internal",
            ExitCode::Interrupted => "interrupted",
            ExitCode::Terminated => "terminated",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),

    #[error("cannot read job file {path}: {source}")]
    JobRead {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A syntax or schema error in the job file, with the line it was found on.
    #[error("{path}:{line}: {message}")]
    Job {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// The job is well formed but does not fit the snapshots (unknown column); `line`
    /// is the line of the entity's table.
    #[error("{path}:{line}: entity `{entity}`: {message}")]
    JobSchema {
        path: PathBuf,
        line: usize,
        entity: String,
        message: String,
    },

    /// The snapshots' columns cannot be compared as the job asks (type clash).
    #[error("{path}:{line}: entity `{entity}`: {message}")]
    SchemaMismatch {
        path: PathBuf,
        line: usize,
        entity: String,
        message: String,
    },

    #[error("invalid URL `{url}`: {message}")]
    Url { url: String, message: String },

    #[error("entity `{entity}`, {system} snapshot: no Parquet files at {url}")]
    MissingSnapshot {
        entity: String,
        system: String,
        url: String,
    },

    #[error("entity `{entity}`, {system} snapshot: {message}")]
    Snapshot {
        entity: String,
        system: String,
        message: String,
    },

    #[error("entity `{entity}`, {system} snapshot: {path} is not readable Parquet: {source}")]
    CorruptFile {
        entity: String,
        system: String,
        path: String,
        source: parquet::errors::ParquetError,
    },

    /// Values of the snapshots that cannot be compared as the job asks (a timestamp
    /// outside the unit its column is compared in).
    #[error("entity `{entity}`: {message}")]
    Values { entity: String, message: String },

    /// A file recon reads back (a manifest, a pointer) is not what it should be.
    #[error("{path}: {message}")]
    BadFile { path: String, message: String },

    /// A file recon reads back (a correction file) cannot be decoded; `source` is the
    /// decoder's error.
    #[error("{path}: {message}")]
    UnreadableFile {
        path: String,
        message: String,
        #[source]
        source: BoxError,
    },

    #[error("storage error at {location}: {source}")]
    Storage {
        location: String,
        source: object_store::Error,
    },

    /// A query failed while running; `context` names the entity and query.
    #[error("{context}: {source}{}", memory_hint(source))]
    Query {
        context: String,
        source: DataFusionError,
    },

    /// The exporter cannot take what the source gives (unsupported column type, a value
    /// that does not fit, malformed JSON): names the system, entity and column or page.
    #[error("export of entity `{entity}` from {system}: {message}")]
    Export {
        system: String,
        entity: String,
        message: String,
    },

    /// The source system could not be reached or kept failing (connection, timeouts,
    /// HTTP 429/5xx after the retries): retrying later may succeed.
    #[error("system `{system}`: {message}")]
    SourceUnavailable { system: String, message: String },

    /// The database `recon apply` writes to could not be reached or failed under it
    /// (connection, transaction): retrying later may succeed. `message` says what apply
    /// was doing; `source` is the driver's error.
    #[error("system `{system}`: {message}")]
    Database {
        system: String,
        message: String,
        #[source]
        source: BoxError,
    },

    /// The database `recon apply` writes to refused a statement outside a correction
    /// (reading a table's columns, creating the ledger, a dry run): fix the job or the
    /// database's grants.
    #[error("apply to {system}: {message}")]
    DatabaseRefused {
        system: String,
        message: String,
        #[source]
        source: BoxError,
    },

    /// TLS to a database cannot work as the URL asks: a CA, certificate or key file
    /// missing or unreadable, an unknown mode, a server certificate that does not verify,
    /// a server without TLS when TLS is required. A configuration mistake: retrying does
    /// not help. `host` is `host:port`; the URL and its password are never included.
    #[error("system `{system}`: TLS to {host}: {reason}")]
    Tls {
        system: String,
        host: String,
        reason: String,
    },

    /// Another run of the same job and run date holds the lock.
    #[error("another run holds the lock {lock}: {holder}")]
    Locked { lock: String, holder: String },

    /// The store accepts a second conditional create of the same object, so no lock
    /// taken there would be real.
    #[error(
        "the object store at {url} ignores conditional writes (If-None-Match), so recon cannot guarantee one run at a time there; use a store that honours them (S3, MinIO), or pass --no-lock if your scheduler already guarantees it"
    )]
    NoConditionalWrites { url: String },

    /// A stop signal arrived; the stage stopped without committing.
    #[error("stopped by {signal}: nothing was committed")]
    Interrupted { signal: &'static str },

    /// A bug in recon, described.
    #[error("{0}")]
    Internal(String),

    /// A bug in recon, with the error it came from; `context` says what recon was doing.
    #[error("{context}: {source}")]
    InternalWith {
        context: String,
        #[source]
        source: BoxError,
    },
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_)
            | Error::JobRead { .. }
            | Error::Job { .. }
            | Error::Url { .. }
            | Error::DatabaseRefused { .. } => ExitCode::Usage,
            Error::JobSchema { .. } | Error::Tls { .. } => ExitCode::Usage,
            Error::MissingSnapshot { .. }
            | Error::Snapshot { .. }
            | Error::CorruptFile { .. }
            | Error::SchemaMismatch { .. }
            | Error::BadFile { .. }
            | Error::UnreadableFile { .. }
            | Error::Values { .. }
            | Error::Export { .. } => ExitCode::InputData,
            Error::SourceUnavailable { .. } | Error::Database { .. } => ExitCode::Storage,
            Error::Storage { source, .. } => storage_exit_code(source),
            Error::Query { source, .. } => query_exit_code(source),
            Error::Locked { .. } => ExitCode::Locked,
            Error::NoConditionalWrites { .. } => ExitCode::Usage,
            Error::Interrupted { signal } if *signal == "SIGINT" => ExitCode::Interrupted,
            Error::Interrupted { .. } => ExitCode::Terminated,
            Error::Internal(_) | Error::InternalWith { .. } => ExitCode::Internal,
        }
    }

    /// A bug: `source` failed while doing `context`.
    pub fn bug(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::InternalWith {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Wraps a DataFusion error with the entity and query it came from.
    pub fn query(context: impl Into<String>, source: DataFusionError) -> Self {
        Error::Query {
            context: context.into(),
            source,
        }
    }
}

fn memory_hint(e: &DataFusionError) -> &'static str {
    if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) {
        " (raise --memory-limit)"
    } else {
        ""
    }
}

fn storage_exit_code(e: &object_store::Error) -> ExitCode {
    match e {
        object_store::Error::NotFound { .. } => ExitCode::InputData,
        _ => ExitCode::Storage,
    }
}

/// A failing query is bad input when the data could not be decoded or cast, a storage
/// failure when the object store failed underneath it, and a bug otherwise.
fn query_exit_code(e: &DataFusionError) -> ExitCode {
    match e.find_root() {
        DataFusionError::ObjectStore(os) => storage_exit_code(os),
        DataFusionError::ParquetError(p) => match p.as_ref() {
            parquet::errors::ParquetError::External(inner)
                if inner.downcast_ref::<object_store::Error>().is_some()
                    || inner.downcast_ref::<std::io::Error>().is_some() =>
            {
                ExitCode::Storage
            }
            _ => ExitCode::InputData,
        },
        DataFusionError::ArrowError(..) => ExitCode::InputData,
        DataFusionError::IoError(_) => ExitCode::Storage,
        // Not a bug and not bad data: the run needs a larger --memory-limit.
        DataFusionError::ResourcesExhausted(_) => ExitCode::Usage,
        DataFusionError::External(inner) => {
            if let Some(os) = inner.downcast_ref::<object_store::Error>() {
                storage_exit_code(os)
            } else if inner.downcast_ref::<std::io::Error>().is_some() {
                ExitCode::Storage
            } else if inner
                .downcast_ref::<parquet::errors::ParquetError>()
                .is_some()
                || inner.downcast_ref::<arrow::error::ArrowError>().is_some()
            {
                ExitCode::InputData
            } else {
                ExitCode::Internal
            }
        }
        _ => ExitCode::Internal,
    }
}

impl From<object_store::Error> for Error {
    fn from(source: object_store::Error) -> Self {
        let location = match &source {
            object_store::Error::NotFound { path, .. } => path.clone(),
            object_store::Error::AlreadyExists { path, .. } => path.clone(),
            object_store::Error::Precondition { path, .. } => path.clone(),
            _ => String::from("object store"),
        };
        Error::Storage { location, source }
    }
}
