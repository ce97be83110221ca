//! recon: nightly reconciliation of two systems through data-lake snapshots.
//!
//! The pipeline: [`job`] (validated configuration) → [`export`] (databases, APIs and
//! files to Parquet snapshots) → [`snapshot`] (input Parquet) →
//! [`diff`] (DataFusion full outer join per entity) → [`write`] (discrepancies,
//! corrections, summary, manifest). [`run`] drives it; [`cli`] is the command line.

pub mod apply;
pub mod cli;
pub mod db;
pub mod diff;
pub mod error;
pub mod export;
pub mod generate;
pub mod job;
pub mod lock;
pub mod parallel;
pub mod run;
pub mod signal;
pub mod snapshot;
pub mod store;
pub(crate) mod template;
pub mod write;

pub use error::{Error, ExitCode, Result};
