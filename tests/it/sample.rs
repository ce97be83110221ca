//! The sample job end to end against the documented planted discrepancies.

use std::collections::BTreeSet;

use arrow::array::{Array, AsArray};
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
        lock: recon::run::LockMode::default(),
        progress: false,
        export: false,
        key_plan: Default::default(),
    }
}

pub fn planted() -> BTreeSet<Disc> {
    read_csv(&repo().join("sample-data/planted.csv"))
        .into_iter()
        .map(|f| {
            (
                f[0].clone(),
                f[1].clone(),
                f[2].clone(),
                f[3].clone(),
                f[4].clone(),
                f[5].clone(),
            )
        })
        .collect()
}

fn key_columns(job: &JobConfig) -> impl Fn(&str) -> Vec<String> + '_ {
    move |entity: &str| job.entity(entity).unwrap().key.clone()
}

/// Non-key columns an insert sets, per entity, in the replica's names.
fn insert_columns(entity: &str) -> &'static str {
    match entity {
        "tenants" => "name;plan;created_at",
        "users" => {
            "email_address;display_name;nickname;balance;score;bio;phone;last_login;updated_at;deleted_at"
        }
        "groups" => "name;created_at",
        "memberships" => "role;added_at",
        other => panic!("unknown entity {other}"),
    }
}

fn planted_corrections() -> Vec<(String, String, String, String, String)> {
    let mut v: Vec<_> = read_csv(&repo().join("sample-data/planted-corrections.csv"))
        .into_iter()
        .map(|f| {
            let changed = if f[4] == "*" {
                insert_columns(&f[1]).to_string()
            } else {
                f[4].clone()
            };
            (
                f[0].clone(),
                f[1].clone(),
                f[2].clone(),
                f[3].clone(),
                changed,
            )
        })
        .collect();
    v.sort();
    v
}

async fn run_fixture(fx: &Fixture, run_id: &str) -> (JobConfig, ExitCode) {
    let job = JobConfig::load(&fx.job()).unwrap();
    let outcome = run(&job, &opts(run_id)).await.unwrap();
    (job, outcome.exit)
}

#[tokio::test]
async fn sample_job_finds_exactly_the_planted_discrepancies() {
    let fx = Fixture::new();
    let (job, exit) = run_fixture(&fx, "first").await;
    assert_eq!(exit, ExitCode::Success);
    let m = manifests(&fx.out());
    assert_eq!(m.len(), 1);
    let found = discrepancies(&fx.out(), &m[0]);
    let expected = planted();
    let missed: Vec<_> = expected.difference(&found).collect();
    let extra: Vec<_> = found.difference(&expected).collect();
    assert!(
        missed.is_empty() && extra.is_empty(),
        "missed: {missed:#?}\nextra: {extra:#?}"
    );

    let got: Vec<_> = corrections(&fx.out(), &m[0], &key_columns(&job))
        .into_iter()
        .map(|(s, e, k, o, c, _)| (s, e, k, o, c))
        .collect();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, planted_corrections());
    assert_eq!(
        m[0].apply_order,
        ["tenants", "users", "groups", "memberships"]
    );
    assert!(m[0].withheld.is_empty());
}

#[tokio::test]
async fn rerun_gives_identical_discrepancies_and_correction_ids() {
    let fx = Fixture::new();
    let (job, _) = run_fixture(&fx, "run-a").await;
    let (_, _) = run_fixture(&fx, "run-b").await;
    let m = manifests(&fx.out());
    assert_eq!(m.len(), 2, "both runs are committed");
    // Whole rows, every column but run_id; correction ids are compared below.
    let rows = |m| output_rows(&fx.out(), m);
    assert_eq!(rows(&m[0]), rows(&m[1]));
    let ids = |m| corrections(&fx.out(), m, &key_columns(&job));
    assert_eq!(ids(&m[0]), ids(&m[1]));
    let latest: recon::write::LatestPointer = serde_json::from_slice(
        &std::fs::read(fx.out().join("runs/run_date=2024-06-01/_latest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(latest.run_id, "run-b");
}

#[tokio::test]
async fn snapshots_sorted_by_key_are_merged_with_the_same_outputs() {
    let fx = Fixture::new();
    let job = JobConfig::load(&fx.job()).unwrap();
    let plans = |summary: &recon::run::RunSummary| -> Vec<(String, &'static str)> {
        summary
            .entities
            .iter()
            .map(|e| (e.entity.clone(), e.key_summary_plan))
            .collect()
    };
    let first = run(&job, &opts("as-written")).await.unwrap();
    // The sample lake is not in key order (users, memberships) or repeats a key on
    // both sides (groups, memberships).
    assert_eq!(
        plans(&first.summary),
        [
            ("tenants".to_string(), "merge"),
            ("users".to_string(), "join"),
            ("groups".to_string(), "aggregation"),
            ("memberships".to_string(), "aggregation"),
        ]
    );
    // Every snapshot rewritten in key order (text by its bytes).
    for system in ["monolith", "service"] {
        for entity in ["tenants", "users", "groups", "memberships"] {
            let path = snapshot_part(&fx.snapshot(system, entity));
            let batches = read_parquet(&path);
            let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
            let keys: Vec<arrow::compute::SortColumn> = key_columns(&job)(entity)
                .iter()
                .map(|k| arrow::compute::SortColumn {
                    values: batch.column_by_name(k).unwrap().clone(),
                    options: None,
                })
                .collect();
            let order = arrow::compute::lexsort_to_indices(&keys, None).unwrap();
            let sorted = arrow::compute::take_record_batch(&batch, &order).unwrap();
            let mut w = parquet::arrow::ArrowWriter::try_new(
                std::fs::File::create(&path).unwrap(),
                sorted.schema(),
                None,
            )
            .unwrap();
            w.write(&sorted).unwrap();
            w.close().unwrap();
        }
    }
    let second = run(&job, &opts("sorted")).await.unwrap();
    assert_eq!(
        plans(&second.summary),
        [
            ("tenants".to_string(), "merge"),
            ("users".to_string(), "merge"),
            ("groups".to_string(), "aggregation"),
            ("memberships".to_string(), "aggregation"),
        ]
    );
    assert_eq!(first.exit, second.exit);
    let m = manifests(&fx.out());
    assert_eq!(m.len(), 2);
    // Whole rows, every column but run_id.
    let rows = |m| output_rows(&fx.out(), m);
    let (a, b) = (rows(&m[0]), rows(&m[1]));
    assert!(!a.is_empty());
    assert_eq!(a, b);
    let ids = |m| corrections(&fx.out(), m, &key_columns(&job));
    assert_eq!(ids(&m[0]), ids(&m[1]));
}

#[tokio::test]
async fn corrections_carry_typed_values_and_expected_values() {
    let fx = Fixture::new();
    run_fixture(&fx, "typed").await;
    let m = &manifests(&fx.out())[0];
    let f = m
        .files
        .iter()
        .find(|f| {
            f.kind == "corrections"
                && f.system.as_deref() == Some("service")
                && f.entity.as_deref() == Some("users")
        })
        .unwrap();
    let batches = read_parquet(&fx.out().join(&f.path));
    let b = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let schema = b.schema();
    // Typed in the replica's own names and types.
    assert_eq!(
        schema.field_with_name("tenant_id").unwrap().data_type(),
        &arrow::datatypes::DataType::Int32
    );
    assert!(schema.field_with_name("email_address").is_ok());
    assert!(matches!(
        schema.field_with_name("balance").unwrap().data_type(),
        arrow::datatypes::DataType::Decimal128(14, 4)
    ));
    let row = |user: &str, tenant: i32| {
        (0..b.num_rows())
            .find(|&r| {
                b.column_by_name("user_id")
                    .unwrap()
                    .as_string::<i32>()
                    .value(r)
                    == user
                    && b.column_by_name("tenant_id")
                        .unwrap()
                        .as_primitive::<arrow::datatypes::Int32Type>()
                        .value(r)
                        == tenant
            })
            .unwrap()
    };
    let show = |name: &str, r: usize| {
        arrow::util::display::array_value_to_string(b.column_by_name(name).unwrap(), r).unwrap()
    };
    let expected = b.column_by_name("expected").unwrap().as_struct().clone();
    let expected_of = |name: &str, r: usize| {
        arrow::util::display::array_value_to_string(expected.column_by_name(name).unwrap(), r)
            .unwrap()
    };

    // An update sets only the changed field and records the replica's current value.
    let r = row("u0003", 1);
    assert_eq!(show("op", r), "update");
    assert_eq!(show("email_address", r), "user3@tenant1.example.com");
    assert_eq!(show("display_name", r), "");
    assert_eq!(
        expected_of("email_address", r),
        "someone.else@tenant1.example.com"
    );
    assert_eq!(expected_of("display_name", r), "User 1-3");
    // A soft delete sets the soft-delete column to midnight of the run date.
    let r = row("u9001", 4);
    assert_eq!(show("op", r), "soft_delete");
    assert_eq!(show("deleted_at", r), "2024-06-01T00:00:00Z");
    // An insert sets every mapped column and expects nothing.
    let r = row("u0001", 4);
    assert_eq!(show("op", r), "insert");
    assert_eq!(show("email_address", r), "user1@tenant4.example.com");
    assert!(expected.is_null(r));
    // A decimal is cast to the replica's scale.
    let r = row("u0005", 1);
    let set: f64 = show("balance", r).parse().unwrap();
    let current: f64 = expected_of("balance", r).parse().unwrap();
    assert!((current - set - 0.02).abs() < 1e-9, "{set} vs {current}");
    assert!(
        show("balance", r).ends_with("00"),
        "four decimals, as the replica has"
    );
}

#[tokio::test]
async fn guardrail_withholds_corrections_but_keeps_discrepancies() {
    let fx = Fixture::new();
    let job = JobConfig::load(&fx.job()).unwrap();
    let mut o = opts("guarded");
    o.max_correction_share = Some(0.05);
    let outcome = run(&job, &o).await.unwrap();
    assert_eq!(outcome.exit, ExitCode::Guardrail);
    let m = &manifests(&fx.out())[0];
    assert_eq!(m.status, "guardrail_tripped");
    // 3/10 tenants, 17/81 users, 2/31 groups trip 5%; 4/123 memberships do not.
    assert_eq!(m.withheld, ["tenants", "users", "groups"]);
    let kinds: Vec<_> = m
        .files
        .iter()
        .map(|f| (f.kind.as_str(), f.entity.as_deref(), f.system.as_deref()))
        .collect();
    assert!(!kinds.contains(&("corrections", Some("users"), Some("service"))));
    assert!(kinds.contains(&("corrections", Some("memberships"), Some("service"))));
    assert_eq!(discrepancies(&fx.out(), m), planted());
    // Withheld files do not linger in the store either.
    assert!(
        !fx.out()
            .join("corrections/run_date=2024-06-01/run_id=guarded/system=service/entity=users")
            .join("part-00000.parquet")
            .exists()
    );
}

#[test]
fn generator_reproduces_the_committed_sample_lake() {
    let dir = tempfile::tempdir().unwrap();
    recon::generate::Sample { scale: 1 }
        .write(dir.path())
        .unwrap();
    let committed = repo().join("sample-data/lake");
    let files = files_below(&committed);
    for rel in &files {
        let fresh = std::fs::read(dir.path().join(rel)).unwrap();
        assert!(
            fresh == std::fs::read(committed.join(rel)).unwrap(),
            "{} differs from a fresh generation",
            rel.display()
        );
    }
    assert_eq!(files, files_below(dir.path()), "same files");
    assert_eq!(files.len(), 8);
}

#[tokio::test]
async fn a_larger_scale_keeps_exactly_the_planted_set() {
    let fx = Fixture::new();
    std::fs::remove_dir_all(fx.path().join("lake")).unwrap();
    recon::generate::Sample { scale: 4 }
        .write(&fx.path().join("lake"))
        .unwrap();
    let (_, _) = run_fixture(&fx, "scaled").await;
    let m = &manifests(&fx.out())[0];
    assert_eq!(discrepancies(&fx.out(), m), planted());
}

#[tokio::test]
async fn memory_store_run_equals_the_file_run() {
    // The sample lake, copied into an in-memory store.
    let lake = recon::store::open("memory://sample-it/lake").unwrap();
    upload(
        lake.store.as_ref(),
        lake.prefix.as_ref(),
        &repo().join("sample-data/lake"),
    )
    .await;
    let mut job = JobConfig::load(&repo().join("jobs/identity.toml")).unwrap();
    job.lake = "memory://sample-it/lake".into();
    job.output = "memory://sample-it/out".into();
    let outcome = run(&job, &opts("mem")).await.unwrap();
    assert_eq!(outcome.exit, ExitCode::Success);

    // Bring the outputs to disk and read them as the file run's.
    let out = recon::store::open("memory://sample-it/out").unwrap();
    let local = tempfile::tempdir().unwrap();
    download(out.store.as_ref(), out.prefix.as_ref(), local.path()).await;
    let m = manifests(local.path());
    assert_eq!(m.len(), 1);
    assert_eq!(discrepancies(local.path(), &m[0]), planted());

    let fx = Fixture::new();
    run_fixture(&fx, "mem").await;
    let file_run = &manifests(&fx.out())[0];
    assert_eq!(
        corrections(&fx.out(), file_run, &key_columns(&job)),
        corrections(local.path(), &m[0], &key_columns(&job))
    );
}

#[tokio::test]
async fn a_collapsed_snapshot_trips_the_guardrail_the_next_night() {
    let fx = Fixture::new();
    let job = JobConfig::load(&fx.job()).unwrap();
    assert_eq!(
        run(&job, &opts("night-1")).await.unwrap().exit,
        ExitCode::Success
    );
    // The next night: the same snapshots, but the monolith's users were restored from an
    // old backup holding 10 rows.
    for system in ["monolith", "service"] {
        for entity in ["tenants", "users", "groups", "memberships"] {
            let from = fx.snapshot(system, entity);
            let to = from.parent().unwrap().join("run_date=2024-06-02");
            copy_dir(&from, &to);
        }
    }
    let users = fx
        .path()
        .join("lake/snapshots/monolith/users/run_date=2024-06-02/part-00000.parquet");
    let batch = read_parquet(&users)[0].slice(0, 10);
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&users).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();

    let mut o = opts("night-2");
    o.run_date = chrono::NaiveDate::from_ymd_opt(2024, 6, 2).unwrap();
    let outcome = run(&job, &o).await.unwrap();
    assert_eq!(outcome.exit, ExitCode::Guardrail);
    let verdict = |name: &str| {
        &outcome
            .summary
            .entities
            .iter()
            .find(|e| e.entity == name)
            .unwrap()
            .guardrail
    };
    let users = verdict("users");
    assert!(users.tripped);
    let reason = users.reason.as_deref().unwrap();
    assert!(
        reason
            .contains("the source snapshot has 10 rows, down from 81 in run night-1 of 2024-06-01"),
        "{reason}"
    );
    assert!(users.tripped_by.contains(&"max_row_drop"), "{users:?}");
    let shown = recon::cli::print::render_text(&outcome.summary, &Default::default());
    assert!(
        shown.contains("release  users: check that the snapshot is complete; if the drop is real, raise max_row_drop"),
        "{shown}"
    );
    assert!(!verdict("tenants").tripped, "unchanged entities pass");
    assert_eq!(verdict("tenants").previous.as_ref().unwrap().source, 10);
    // The withheld entity's corrections and their events are gone; the others' stay,
    // and the manifest lists exactly the files there are.
    let night = |dir: &str| -> Vec<String> {
        crate::common::files_below(&fx.out().join(dir))
            .into_iter()
            .map(|p| p.display().to_string())
            .filter(|p| p.contains("run_id=night-2"))
            .collect()
    };
    for dir in ["corrections", "events"] {
        let files = night(dir);
        assert!(
            files.iter().all(|p| !p.contains("entity=users")),
            "{files:?}"
        );
        assert!(
            files.iter().any(|p| p.contains("entity=")),
            "{dir}: {files:?}"
        );
    }
    let manifest = manifests(&fx.out())
        .into_iter()
        .find(|m| m.run_id == "night-2")
        .unwrap();
    let mut listed: Vec<String> = manifest
        .files
        .iter()
        .map(|f| f.path.clone())
        .filter(|p| p.starts_with("corrections/") || p.starts_with("events/"))
        .collect();
    listed.sort();
    let mut present: Vec<String> = ["corrections", "events"]
        .iter()
        .flat_map(|dir| night(dir).into_iter().map(move |p| format!("{dir}/{p}")))
        .collect();
    present.sort();
    assert_eq!(listed, present);
}

#[test]
fn benchmark_pair_diff_finds_exactly_the_expected_counts() {
    let dir = tempfile::tempdir().unwrap();
    let expected = recon::generate::bench::write_pair(&dir.path().join("pair"), 1_000_000).unwrap();
    // The right snapshot again, out of key order: its last batch first.
    unsorted_copy(
        &dir.path().join("pair/right.parquet"),
        &dir.path().join("pair/right-unsorted.parquet"),
    );
    // The generator writes in key order, so the key summary is the merge, which holds
    // a few batches whatever the limit; out of order, the join; under the smallest
    // limit, the aggregation, which spills to disk. The same answer, to the byte,
    // every time, and with the snapshots read into buffers instead of mapped.
    let mut outputs = Vec::new();
    for (run, right, limit, path) in [
        ("merge", "pair/right.parquet", "1GiB", "merge"),
        ("merge-read", "pair/right.parquet", "1GiB", "merge"),
        ("merge-small", "pair/right.parquet", "64MiB", "merge"),
        ("join", "pair/right-unsorted.parquet", "1GiB", "join"),
        (
            "aggregation",
            "pair/right-unsorted.parquet",
            "64MiB",
            "aggregation",
        ),
    ] {
        let (stderr, summary) = diff_pair(
            dir.path(),
            "pair/left.parquet",
            right,
            "r1",
            &["--memory-limit", limit],
            run,
            &[(
                "RECON_LOCAL_MMAP",
                if run == "merge-read" { "0" } else { "1" },
            )],
        );
        assert_eq!(
            stderr.contains("spilled to disk under the memory limit"),
            path == "aggregation",
            "{stderr}"
        );
        assert_eq!(
            stderr.contains("the replica snapshot is not sorted by its key"),
            path != "merge",
            "{stderr}"
        );
        assert_eq!(
            stderr.contains("key summary by aggregation"),
            path == "aggregation",
            "{stderr}"
        );
        assert_eq!(summary["entities"][0]["key_summary_plan"], path, "{run}");
        let counts = &summary["entities"][0]["counts"];
        let total = |kind: &str| -> u64 {
            counts
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["kind"] == kind)
                .map(|c| c["count"].as_u64().unwrap())
                .sum()
        };
        assert_eq!(total("missing_in_replica"), expected.missing_in_replica);
        assert_eq!(total("extra_in_replica"), expected.extra_in_replica);
        assert_eq!(total("field_mismatch"), expected.field_mismatch);
        // Each of the 11 compared columns drifts in turn.
        let fields: std::collections::BTreeSet<_> = counts
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["kind"] == "field_mismatch")
            .map(|c| c["field"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(fields.len(), recon::generate::bench::FIELDS.len());
        outputs.push(parquet_tree(&dir.path().join(run)));
    }
    // The join and the aggregation runs first merged part of the pairs, until the
    // disorder showed: what they wrote by then is gone, every file is the merge's.
    let files = |run: &str| files_below(&dir.path().join(run));
    for run in ["merge-read", "merge-small", "join", "aggregation"] {
        assert_eq!(files("merge"), files(run), "{run}");
    }
    assert!(outputs[0].len() >= 2, "discrepancies and corrections");
    assert_eq!(outputs[0], outputs[1], "mapped and read snapshots");
    assert_eq!(outputs[0], outputs[2], "merge under 1GiB and 64MiB");
    assert_eq!(outputs[0], outputs[3], "merge and join");
    assert_eq!(outputs[0], outputs[4], "merge and aggregation");
}

/// Copies the Parquet file `from` to `to` with its last batch moved to the front.
fn unsorted_copy(from: &std::path::Path, to: &std::path::Path) {
    let mut batches = read_parquet(from);
    let last = batches.pop().unwrap();
    batches.insert(0, last);
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(to).unwrap(),
        batches[0].schema(),
        None,
    )
    .unwrap();
    for b in &batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

/// Every Parquet file below `dir`, by relative path, as one batch.
fn parquet_tree(
    dir: &std::path::Path,
) -> std::collections::BTreeMap<String, arrow::array::RecordBatch> {
    files_below(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| {
            let batches = read_parquet(&dir.join(&p));
            let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
            (p.display().to_string(), batch)
        })
        .collect()
}

/// Runs `recon diff` keyed by `id` on two Parquet files below `dir` as run `run_id`,
/// with `options` before the subcommand, `env` in its environment and info logging,
/// writing to `output` below `dir`; asserts success and returns the log and the JSON summary.
fn diff_pair(
    dir: &std::path::Path,
    left: &str,
    right: &str,
    run_id: &str,
    options: &[&str],
    output: &str,
    env: &[(&str, &str)],
) -> (String, serde_json::Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recon"))
        .current_dir(dir)
        .envs(env.iter().copied())
        .args(["--log-level", "info"])
        .args(options)
        .args([
            "diff",
            "--left",
            left,
            "--right",
            right,
            "--key",
            "id",
            "--run-date",
            "2024-01-01",
            "--run-id",
            run_id,
            "--output",
            output,
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let summary = serde_json::from_slice(&out.stdout).unwrap();
    (stderr, summary)
}

/// Writes a Parquet file of `(id BIGINT, name VARCHAR)` rows.
fn id_name_file(path: &std::path::Path, rows: &[(i64, &str)]) {
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            std::sync::Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            std::sync::Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn a_key_repeated_on_both_sides_is_summarised_by_the_aggregation() {
    // Key 3 is in both snapshots and twice, identically, in the left one: the key join
    // would pair both left rows with the right one and see no difference. recon notices
    // from the join's row count and summarises by aggregation instead; key 6, repeated
    // on the left only, is visible to the join and needs no fallback.
    let unique: &[(i64, &str)] = &[(1, "a"), (2, "b"), (3, "c"), (4, "d"), (6, "f"), (6, "f")];
    let repeated: &[(i64, &str)] = &[
        (1, "a"),
        (2, "b"),
        (3, "c"),
        (3, "c"),
        (4, "d"),
        (6, "f"),
        (6, "f"),
    ];
    let right: &[(i64, &str)] = &[(1, "a"), (2, "B"), (3, "c"), (5, "e")];
    for (left, fallback, source_duplicates) in [(unique, false, 1), (repeated, true, 2)] {
        let dir = tempfile::tempdir().unwrap();
        id_name_file(&dir.path().join("left.parquet"), left);
        id_name_file(&dir.path().join("right.parquet"), right);
        let (stderr, summary) = diff_pair(
            dir.path(),
            "left.parquet",
            "right.parquet",
            "r1",
            &[],
            "out",
            &[],
        );
        assert_eq!(
            stderr.contains("a key on both sides is repeated"),
            fallback,
            "{stderr}"
        );
        let mut counts: Vec<(String, Option<String>, u64)> = summary["entities"][0]["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["kind"].as_str().unwrap().to_string(),
                    c["field"].as_str().map(str::to_string),
                    c["count"].as_u64().unwrap(),
                )
            })
            .collect();
        counts.sort();
        assert_eq!(
            counts,
            vec![
                ("duplicate_key".to_string(), None, source_duplicates),
                ("extra_in_replica".to_string(), None, 1),
                ("field_mismatch".to_string(), Some("name".to_string()), 1),
                ("missing_in_replica".to_string(), None, 1),
            ],
            "{stderr}"
        );
    }
}
