//! The command line: output and exit code for success, the guardrail and each kind of
//! bad input, snapshot-tested with volatile values (temp paths) filtered.

use std::process::Command;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use insta_cmd::assert_cmd_snapshot;

use crate::common::*;

fn recon(fx: &Fixture) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recon"));
    cmd.current_dir(fx.path())
        .env_remove("RUST_LOG")
        .arg("--log-level")
        .arg("error");
    cmd
}

fn run_sample(fx: &Fixture) -> Command {
    let mut cmd = recon(fx);
    cmd.args(RUN_SAMPLE).args(["--run-id", "cli-test"]);
    cmd
}

macro_rules! snapshot {
    ($cmd:expr) => {
        insta::with_settings!({filters => vec![
            (r"/tmp/\.tmp[A-Za-z0-9_]+", "[TMP]"),
            (r"file:///tmp/\.tmp[A-Za-z0-9_]+", "file://[TMP]"),
        ]}, {
            assert_cmd_snapshot!($cmd);
        });
    };
}

#[test]
fn run_succeeds_and_prints_the_summary() {
    let fx = Fixture::new();
    snapshot!(run_sample(&fx));
}

#[test]
fn guardrail_trips_with_its_own_exit_code() {
    let fx = Fixture::new();
    snapshot!(run_sample(&fx).args(["--max-correction-share", "0.05"]));
}

#[test]
fn malformed_toml_names_file_and_line() {
    let fx = Fixture::new();
    fx.edit_job(|t| t.replace("[systems]", "[systems"));
    snapshot!(run_sample(&fx));
}

#[test]
fn unknown_key_names_file_and_line() {
    let fx = Fixture::new();
    fx.edit_job(|t| {
        t.replace(
            "depends_on = [\"groups\", \"users\"]",
            "depends_on = [\"groups\", \"users\"]\ncolour = \"red\"",
        )
    });
    snapshot!(run_sample(&fx));
}

#[test]
fn unknown_column_names_entity_and_column() {
    let fx = Fixture::new();
    fx.edit_job(|t| {
        t.replace(
            "fields.nickname",
            "fields.shoe_size = { owner = \"none\" }\nfields.nickname",
        )
    });
    snapshot!(run_sample(&fx));
}

#[test]
fn missing_snapshot_is_bad_input() {
    let fx = Fixture::new();
    std::fs::remove_dir_all(fx.snapshot("service", "groups")).unwrap();
    snapshot!(run_sample(&fx));
    assert!(manifests(&fx.out()).is_empty(), "nothing is committed");
}

#[test]
fn corrupt_parquet_names_the_file() {
    let fx = Fixture::new();
    std::fs::write(
        fx.snapshot("monolith", "tenants")
            .join("part-00001.parquet"),
        b"not parquet at all",
    )
    .unwrap();
    snapshot!(run_sample(&fx));
    assert!(manifests(&fx.out()).is_empty(), "nothing is committed");
}

#[test]
fn schema_mismatch_names_entity_and_column() {
    let fx = Fixture::new();
    let dir = fx.snapshot("service", "tenants");
    std::fs::remove_file(dir.join("part-00000.parquet")).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("tenant_id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("plan", DataType::Utf8, false),
        Field::new("created_at", DataType::Utf8, false),
    ]));
    let col = || Arc::new(StringArray::from(vec!["1"])) as _;
    let batch =
        RecordBatch::try_new(Arc::clone(&schema), vec![col(), col(), col(), col()]).unwrap();
    let file = std::fs::File::create(dir.join("part-00000.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    snapshot!(run_sample(&fx));
}

#[test]
fn duplicate_keys_are_reported_not_fatal() {
    let fx = Fixture::new();
    let mut cmd = recon(&fx);
    cmd.args([
        "diff",
        "--left",
        "lake/snapshots/monolith/memberships/run_date=2024-06-01",
        "--right",
        "lake/snapshots/service/memberships/run_date=2024-06-01",
        "--key",
        "tenant_id,group_id,user_id",
        "--entity",
        "memberships",
        "--run-date",
        "2024-06-01",
        "--run-id",
        "adhoc",
        "--output",
        "adhoc-out",
    ]);
    snapshot!(cmd);
}

#[test]
fn bad_arguments_are_usage_errors() {
    let fx = Fixture::new();
    let mut cmd = recon(&fx);
    cmd.args(["run", "--job", "job.toml", "--run-date", "2024-13-01"]);
    snapshot!(cmd);
}

#[test]
fn a_bad_datafusion_setting_is_a_usage_error() {
    let fx = Fixture::new();
    let out = run_sample(&fx)
        .env("DATAFUSION_EXECUTION_BATCH_SIZE", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DATAFUSION_EXECUTION_BATCH_SIZE"),
        "stderr: {err}"
    );
}

#[test]
fn validate_checks_job_and_snapshots() {
    let fx = Fixture::new();
    let mut cmd = recon(&fx);
    cmd.args(["validate", "--job", "job.toml", "--run-date", "2024-06-01"]);
    snapshot!(cmd);
}

#[test]
fn a_held_lock_has_its_own_exit_code() {
    let fx = Fixture::new();
    let lock = fx.out().join("locks/run_date=2024-06-01.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(
        &lock,
        r#"{"job":"identity","run_date":"2024-06-01","run_id":"nightly-1","owner":"worker-3:4242",
            "acquired_at":"2999-01-01T00:00:00Z","expires_at":"2999-01-01T06:00:00Z"}"#,
    )
    .unwrap();
    snapshot!(run_sample(&fx));
}

/// Runs `recon` under a pseudo-terminal (util-linux `script`), so stderr is a terminal;
/// returns what the terminal showed.
fn on_a_terminal(fx: &Fixture, extra: &[&str]) -> String {
    let bin = env!("CARGO_BIN_EXE_recon");
    let mut line = format!("{bin} --log-level error");
    for a in extra
        .iter()
        .copied()
        .chain(RUN_SAMPLE)
        .chain(["--run-id", "tty-test"])
    {
        line.push(' ');
        line.push_str(a);
    }
    let out = Command::new("script")
        .current_dir(fx.path())
        .env_remove("RUST_LOG")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .expect("util-linux `script` runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn progress_shows_on_a_terminal_only() {
    let fx = Fixture::new();
    let shown = on_a_terminal(&fx, &[]);
    for entity in ["tenants", "users", "groups", "memberships"] {
        assert!(
            shown.contains(&format!("] {entity}: ")) && shown.contains("done in"),
            "no progress for {entity} on a terminal:\n{shown}"
        );
    }
    let fx = Fixture::new();
    let quiet = on_a_terminal(&fx, &["--quiet"]);
    assert!(
        !quiet.contains("done in"),
        "--quiet printed progress:\n{quiet}"
    );
    let fx = Fixture::new();
    let piped = run_sample(&fx).output().unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !stderr.contains("done in") && !stderr.contains('\r'),
        "progress printed to a pipe:\n{stderr}"
    );
}
