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
            (r"elapsed [0-9.]+ s", "elapsed [ELAPSED]"),
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

/// The JSON summary of a run, from one line of stdout.
fn json_line(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "not one line:\n{stdout}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn json_summary_is_one_line_with_totals_and_the_exit_code() {
    let fx = Fixture::new();
    let out = run_sample(&fx).args(["--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let s = json_line(&out);
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["status"], "success");
    let entities = s["entities"].as_array().unwrap();
    let sum = |f: &dyn Fn(&serde_json::Value) -> u64| entities.iter().map(f).sum::<u64>();
    let t = &s["totals"];
    assert_eq!(t["entities"], 4);
    assert_eq!(
        t["discrepancies"].as_u64().unwrap(),
        sum(&|e| e["discrepancies"].as_u64().unwrap())
    );
    assert_eq!(
        t["source_rows"].as_u64().unwrap(),
        sum(&|e| e["rows"]["source"].as_u64().unwrap())
    );
    // Every discrepancy row is either correctable or reported only.
    assert_eq!(
        t["correctable"].as_u64().unwrap() + t["report_only"].as_u64().unwrap(),
        t["discrepancies"].as_u64().unwrap(),
        "{t}"
    );
    // The sample's nickname is owned by nobody: its mismatches are report-only.
    assert!(t["report_only"].as_u64().unwrap() > 0, "{t}");
    let written: u64 = t["corrections"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|ops| ops.as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        written,
        sum(&|e| e["guardrail"]["corrections"].as_u64().unwrap())
    );
    // The snapshots' file lists only on request.
    let inputs = &entities[0]["inputs"]["source"];
    assert!(
        inputs["rows"].is_u64() && inputs.get("files").is_none(),
        "{inputs}"
    );

    let fx = Fixture::new();
    let out = run_sample(&fx)
        .args(["--format", "json", "--list-inputs"])
        .output()
        .unwrap();
    let s = json_line(&out);
    let files = &s["entities"][0]["inputs"]["source"]["files"];
    assert!(files.as_array().is_some_and(|f| !f.is_empty()), "{files}");
}

#[test]
fn json_failure_prints_an_error_object() {
    let fx = Fixture::new();
    std::fs::remove_dir_all(fx.snapshot("service", "groups")).unwrap();
    let out = run_sample(&fx).args(["--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let e = json_line(&out);
    assert_eq!(e["status"], "error");
    assert_eq!(e["exit_code"], 4);
    assert_eq!(e["error"]["category"], "input_data");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("groups"),
        "{e}"
    );
    // The message goes to stderr too, as without --format json.
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: "));
}

#[test]
fn the_summary_lists_columns_on_one_side_only() {
    let fx = Fixture::new();
    // The replica's tenants gain a column the source does not have.
    let part = fx.snapshot("service", "tenants").join("part-00000.parquet");
    let batches = read_parquet(&part);
    let schema = batches[0].schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("etl_batch", DataType::Utf8, true));
    let wider = Arc::new(Schema::new(fields));
    let file = std::fs::File::create(&part).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, Arc::clone(&wider), None).unwrap();
    for b in &batches {
        let mut columns = b.columns().to_vec();
        columns.push(Arc::new(StringArray::from(vec![Some("b1"); b.num_rows()])));
        w.write(&RecordBatch::try_new(Arc::clone(&wider), columns).unwrap())
            .unwrap();
    }
    w.close().unwrap();

    let out = run_sample(&fx).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("tenants: not compared, on one side only: replica only: etl_batch"),
        "{shown}"
    );
    let fx2 = Fixture::new();
    std::fs::copy(
        &part,
        fx2.snapshot("service", "tenants")
            .join("part-00000.parquet"),
    )
    .unwrap();
    let out = run_sample(&fx2)
        .args(["--format", "json"])
        .output()
        .unwrap();
    let s = json_line(&out);
    assert_eq!(s["entities"][0]["one_sided"]["replica"][0], "etl_batch");
    // The sample's users have one too (`internal_version`, in the replica only).
    assert_eq!(
        s["entities"][1]["one_sided"]["replica"][0],
        "internal_version"
    );
    assert_eq!(s["totals"]["one_sided_columns"], 2);
    let out = recon(&fx2)
        .args(["validate", "--job", "job.toml", "--run-date", "2024-06-01"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("tenants: not compared, in the replica snapshot only: etl_batch"),
        "{}",
        describe(&out)
    );
}
