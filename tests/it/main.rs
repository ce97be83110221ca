//! Integration tests: one binary, shared helpers in `common`.

mod airflow;
mod apply_db;
mod bad_input;
mod cli;
mod cli_args;
mod common;
mod connect;
mod db;
mod differential;
mod export_db;
mod export_files;
mod export_http;
mod faults;
mod lock;
mod s3;
mod safety;
mod sample;
mod store;
mod tls;
mod trust;
