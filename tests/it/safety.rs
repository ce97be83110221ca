//! Nothing lost: a committed run is never rewritten, a guard is never silently off, a
//! repeated key never becomes a cross product, a stopped run leaves nothing behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use recon::ExitCode;
use recon::job::JobConfig;
use recon::run::{RunOptions, run};

use crate::common::*;

fn opts(run_id: &str) -> RunOptions {
    RunOptions {
        run_date: recon::generate::sample_run_date(),
        run_id: Some(run_id.into()),
        entities: vec![],
        max_correction_share: None,
        target_partitions: 2,
        memory_limit: 1 << 30,
        lock: Default::default(),
        progress: false,
        export: false,
        key_plan: Default::default(),
    }
}

/// Every file below `dir` but the lock folder, with its bytes.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_below(dir)
        .into_iter()
        .filter(|rel| !rel.starts_with("locks"))
        .map(|rel| {
            let bytes = std::fs::read(dir.join(&rel)).unwrap();
            (rel.to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

/// A rerun of a committed run id (an Airflow task cleared or retried with the same
/// `--run-id`) is refused before it writes, and the committed run keeps every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_run_id_is_refused_and_its_files_are_untouched() {
    let fx = Fixture::new();
    let job = JobConfig::load(&fx.job()).unwrap();
    run(&job, &opts("nightly")).await.unwrap();
    let before = contents(&fx.out());
    assert!(before.keys().any(|k| k.ends_with("_manifest.json")));
    // The rerun would find other data: it must still not touch the committed run.
    std::fs::remove_dir_all(fx.snapshot("service", "groups")).unwrap();
    let err = run(&job, &opts("nightly"))
        .await
        .err()
        .expect("a committed run id is refused");
    assert_eq!(err.exit_code(), ExitCode::Usage, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("run `nightly` of 2024-06-01 is already committed")
            && message.contains("--run-id"),
        "{message}"
    );
    assert_eq!(
        contents(&fx.out()),
        before,
        "the committed run is unchanged"
    );
    // A new id runs (and fails on the missing snapshot, cleaning up after itself only).
    let err = run(&job, &opts("nightly-2"))
        .await
        .err()
        .expect("snapshot gone");
    assert_eq!(err.exit_code(), ExitCode::InputData, "{err}");
    assert_eq!(
        contents(&fx.out()),
        before,
        "a failed rerun removes only its own files"
    );
}

/// A `version` column the snapshots do not have would leave apply's guard off: the
/// run refuses it, naming the column.
#[tokio::test]
async fn a_version_column_missing_from_the_snapshots_is_refused() {
    let fx = Fixture::new();
    fx.edit_job(|j| {
        j.replace(
            "name = \"tenants\"\nkey = [\"tenant_id\"]",
            "name = \"tenants\"\nkey = [\"tenant_id\"]\nversion = \"updated_att\"",
        )
    });
    let job = JobConfig::load(&fx.job()).unwrap();
    let err = run(&job, &opts("typo")).await.err().expect("version typo");
    assert_eq!(err.exit_code(), ExitCode::Usage, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("entity `tenants`")
            && message.contains("version column `updated_att` is not in the source snapshot"),
        "{message}"
    );
    assert!(manifests(&fx.out()).is_empty(), "nothing committed");
    assert!(!fx.out().join("discrepancies").exists(), "nothing written");
}

/// One Parquet file of `rows` rows, all with key 1, sorted (trivially) by it.
fn one_key(path: &Path, rows: usize, value: &str) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
    ]));
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, Arc::clone(&schema), None).unwrap();
    let mut left = rows;
    while left > 0 {
        let n = left.min(65_536);
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![1; n])),
                Arc::new(StringArray::from(vec![value; n])),
            ],
        )
        .unwrap();
        writer.write(&batch).unwrap();
        left -= n;
    }
    writer.close().unwrap();
}

/// Runs `cmd` and returns its output and its peak resident memory in bytes.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped with wait4, which also gives its peak memory"
)]
fn run_measured(cmd: &mut Command) -> (std::process::Output, u64) {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let out = std::thread::scope(|s| {
        let (mut stdout, mut stderr) = (child.stdout.unwrap(), child.stderr.unwrap());
        let o = s.spawn(move || {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut stdout, &mut b).unwrap();
            b
        });
        let e = s.spawn(move || {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut stderr, &mut b).unwrap();
            b
        });
        (o.join().unwrap(), e.join().unwrap())
    });
    let mut status = 0;
    // SAFETY: plain wait4 on our own child, with out-parameters we own.
    let (waited, usage) = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let waited = libc::wait4(pid, &mut status, 0, &mut usage);
        (waited, usage)
    };
    assert_eq!(waited, pid, "wait4");
    let status = std::os::unix::process::ExitStatusExt::from_raw(status);
    (
        std::process::Output {
            status,
            stdout: out.0,
            stderr: out.1,
        },
        usage.ru_maxrss as u64 * 1024,
    )
}

/// A million rows of one key on each side (a wrong `key` in a job does this) are
/// reported as duplicate keys, never paired into their cross product, on every plan
/// and within the memory limit.
#[test]
fn a_key_repeated_a_million_times_on_both_sides_stays_within_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (left, right) = (
        dir.path().join("left.parquet"),
        dir.path().join("right.parquet"),
    );
    one_key(&left, 1_000_000, "a");
    one_key(&right, 1_000_000, "b");
    for plan in ["auto", "join", "aggregation"] {
        let out = dir.path().join(format!("out-{plan}"));
        let (output, peak) = run_measured(
            Command::new(env!("CARGO_BIN_EXE_recon"))
                .args(["--memory-limit", "256MiB", "diff", "--left"])
                .arg(&left)
                .arg("--right")
                .arg(&right)
                .args(["--key", "id", "--output"])
                .arg(&out)
                .args([
                    "--run-date",
                    "2024-06-01",
                    "--format",
                    "json",
                    "--key-plan",
                    plan,
                ]),
        );
        assert!(output.status.success(), "{plan}: {}", describe(&output));
        let m = manifests(&out);
        assert_eq!(m.len(), 1);
        let discs = discrepancies(&out, &m[0]);
        let kinds: Vec<&str> = discs.iter().map(|d| d.2.as_str()).collect();
        assert!(
            !kinds.is_empty() && kinds.iter().all(|k| *k == "duplicate_key"),
            "{plan}: {kinds:?}"
        );
        // The memory limit bounds what the queries hold; the process adds its code,
        // runtime and buffers on top.
        assert!(
            peak < 768 << 20,
            "{plan}: peak memory {} MiB for a 256 MiB limit",
            peak >> 20
        );
    }
}

/// A damaged `_latest.json` (or manifest) of an earlier run date is passed over by the
/// guardrail with a warning: one bad file must not stop every later run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_pointer_of_an_earlier_date_does_not_stop_later_runs() {
    let fx = Fixture::new();
    let job = JobConfig::load(&fx.job()).unwrap();
    for (date, text) in [
        ("2024-05-30", "{\"run_id\": \"x\", \"manif"),
        (
            "2024-05-31",
            "{\"run_id\": \"x\", \"manifest\": \"runs/run_date=2024-05-31/run_id=x/_manifest.json\"}",
        ),
    ] {
        let dir = fx.out().join(format!("runs/run_date={date}"));
        std::fs::create_dir_all(dir.join("run_id=x")).unwrap();
        std::fs::write(dir.join("_latest.json"), text).unwrap();
        std::fs::write(
            dir.join("run_id=x/_manifest.json"),
            "{\"format_version\": 1,",
        )
        .unwrap();
    }
    let outcome = run(&job, &opts("after-damage")).await.unwrap();
    assert_eq!(outcome.exit, ExitCode::Success);
}
