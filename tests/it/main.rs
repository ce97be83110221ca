//! Integration tests: one binary, shared helpers in `common`.

mod cli;
mod common;
mod lock;
mod s3;
mod sample;
mod store;
