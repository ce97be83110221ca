//! Database connections for export and apply alike: the only place that opens one.
//! Reads the TLS options of PostgreSQL and MySQL URLs (libpq's and the MySQL client's
//! conventions) and speaks TLS with rustls; never puts a URL or password in an error.

pub mod mysql;
pub mod postgres;
pub mod tls;

pub use tls::{Roots, TlsMode, TlsSettings};
