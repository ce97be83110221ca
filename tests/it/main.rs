//! Integration tests: one binary, shared helpers in `common`.

mod cli;
mod common;
mod lock;
mod sample;
