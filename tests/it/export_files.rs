//! The files exporter: CSV, NDJSON and Parquet already in the lake, rewritten in the
//! snapshot layout with the declared column types.

use std::path::Path;
use std::process::Command;

use crate::common::{schema_and_rows, snapshot_part};

fn export(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_recon"))
        .current_dir(dir)
        .args(["export", "--job", "job.toml", "--run-date", "2024-06-01"])
        .output()
        .unwrap()
}

fn exported(dir: &Path, entity: &str) -> String {
    schema_and_rows(&snapshot_part(
        &dir.join(format!("lake/snapshots/drop/{entity}/run_date=2024-06-01")),
    ))
}

#[test]
fn csv_ndjson_and_parquet_files_become_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox/2024-06-01");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(
        inbox.join("users.csv"),
        "id;email;balance;joined\n1;a@x.io;10.50;2024-05-01T10:00:00Z\n2;;-3.25;\n",
    )
    .unwrap();
    std::fs::write(
        inbox.join("events.ndjson"),
        "{\"id\": 1, \"kind\": \"login\", \"ok\": true}\n{\"id\": 2, \"kind\": null, \"ok\": false}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("job.toml"),
        r#"[job]
name = "t"
lake = "lake"
[systems]
source = "drop"
replica = "other"
[exporters.drop]
kind = "files"
[[entities]]
name = "users"
key = ["id"]
export.drop = { path = "inbox/{run_date}/users.csv", format = "csv", delimiter = ";", columns = ["id bigint", "email text", "balance decimal(8,2)", "joined timestamptz"] }
[[entities]]
name = "events"
key = ["id"]
export.drop = { path = "inbox/{run_date}/events.ndjson", format = "ndjson" }
"#,
    )
    .unwrap();
    let out = export(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    insta::assert_snapshot!(exported(dir.path(), "users"));
    insta::assert_snapshot!(exported(dir.path(), "events"));

    // A decimal with more places than declared is an error, never a rounding.
    let job = std::fs::read_to_string(dir.path().join("job.toml")).unwrap();
    std::fs::write(
        inbox.join("users.csv"),
        "id;email;balance;joined\n1;a@x.io;10.505;\n",
    )
    .unwrap();
    let out = export(dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("column `balance`: `10.505` has more than 2 decimal places"),
        "{err}"
    );

    // A missing input file is an input-data error naming the file.
    std::fs::write(
        dir.path().join("job.toml"),
        job.replace("users.csv", "nope.csv"),
    )
    .unwrap();
    let out = export(dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("nope.csv"), "{err}");
}
