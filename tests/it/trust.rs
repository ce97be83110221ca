//! Regression tests for exact verdicts: each pins a class of wrong verdicts or aborted
//! runs found on small, tricky snapshot pairs, run through the real run path on every
//! key-summary plan.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date64Array, Decimal128Array, DictionaryArray, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray, TimestampMicrosecondArray, TimestampNanosecondArray, UInt64Array,
};
use arrow::datatypes::Int32Type;
use parquet::arrow::ArrowWriter;
use recon::diff::plan::KeyPlan;
use recon::job::JobConfig;
use recon::run::{LockMode, RunOptions, RunSummary};

use crate::common::{manifests, output_rows};

const PLANS: [KeyPlan; 3] = [KeyPlan::Merge, KeyPlan::Join, KeyPlan::Aggregation];

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).unwrap()
}

fn write(path: &Path, b: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), b.schema(), None).unwrap();
    w.write(b).unwrap();
    w.close().unwrap();
}

/// What one run of a case left: its summary, and every row of its discrepancy and
/// correction files as text (see [`output_rows`]), and its events.
struct Outcome {
    summary: RunSummary,
    rows: Vec<Vec<String>>,
    events: String,
}

/// Runs entity `t` of `entity_toml` on the two sides, once per key-summary plan, and
/// checks that every plan writes the same rows; returns the first plan's outcome.
fn run_case(entity_toml: &str, source: &RecordBatch, replica: &RecordBatch) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let part = |system: &str| {
        dir.path().join(format!(
            "lake/snapshots/{system}/t/run_date=2024-06-01/part-0.parquet"
        ))
    };
    write(&part("src"), source);
    write(&part("rep"), replica);
    let mut outcomes: Vec<Outcome> = Vec::new();
    for plan in PLANS {
        let out = format!("out-{plan:?}");
        let job = dir.path().join(format!("job-{plan:?}.toml"));
        std::fs::write(
            &job,
            format!(
                "[job]\nname = \"j\"\nlake = \"lake\"\noutput = \"{out}\"\n[systems]\nsource = \"src\"\nreplica = \"rep\"\n[guardrails]\nmax_correction_share = 1.0\n[[entities]]\nname = \"t\"\n{entity_toml}\n"
            ),
        )
        .unwrap();
        let job = JobConfig::load(&job).unwrap();
        let opts = RunOptions {
            run_date: recon::generate::sample_run_date(),
            run_id: Some("r1".into()),
            entities: vec![],
            max_correction_share: None,
            target_partitions: 2,
            memory_limit: 1 << 30,
            lock: LockMode::Disabled,
            progress: false,
            export: false,
            key_plan: plan,
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let outcome = rt
            .block_on(recon::run::run(&job, &opts))
            .unwrap_or_else(|e| panic!("{plan:?}: {e}"));
        let out = dir.path().join(out);
        let m = manifests(&out).pop().unwrap();
        let mut events = String::new();
        for f in m.files.iter().filter(|f| f.kind == "events") {
            events.push_str(&std::fs::read_to_string(out.join(&f.path)).unwrap());
        }
        outcomes.push(Outcome {
            rows: output_rows(&out, &m),
            summary: outcome.summary,
            events,
        });
    }
    for (plan, o) in PLANS.iter().zip(&outcomes).skip(1) {
        assert_eq!(o.rows, outcomes[0].rows, "{plan:?} against {:?}", PLANS[0]);
    }
    outcomes.remove(0)
}

/// The (key, kind, field, source_value, replica_value, action, reason) of each
/// discrepancy row.
fn discrepancies(o: &Outcome) -> Vec<[String; 7]> {
    // run_date, job, entity, key, kind, field, source_value, replica_value, owner,
    // action, reason, numeric_delta, correction_id (run_id dropped)
    o.rows
        .iter()
        .filter(|r| r.len() == 13 && r[1] == "j")
        .map(|r| {
            [
                r[3].clone(),
                r[4].clone(),
                r[5].clone(),
                r[6].clone(),
                r[7].clone(),
                r[9].clone(),
                r[10].clone(),
            ]
        })
        .collect()
}

fn row(v: [&str; 7]) -> [String; 7] {
    v.map(str::to_string)
}

#[test]
fn a_key_wider_than_the_other_sides_type_is_compared_not_cast_down() {
    // Regression: a replica key of 2^31 against an Int32 source key aborted the run.
    let source = batch(vec![
        ("id", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef),
        ("n", Arc::new(Int64Array::from(vec![10, 1 << 40]))),
    ]);
    let replica = batch(vec![
        (
            "id",
            Arc::new(Int64Array::from(vec![1, 2, 1 << 31])) as ArrayRef,
        ),
        ("n", Arc::new(Int32Array::from(vec![10, 7, 3]))),
    ]);
    let o = run_case("key = [\"id\"]", &source, &replica);
    let d = discrepancies(&o);
    assert_eq!(
        d,
        [
            // 2^40 does not fit the replica's Int32 column: withheld, not truncated.
            row([
                "{\"id\":2}",
                "field_mismatch",
                "n",
                "1099511627776",
                "7",
                "report_only",
                "unrepresentable"
            ]),
            row([
                "{\"id\":2147483648}",
                "extra_in_replica",
                "",
                "",
                "",
                "correct_replica",
                ""
            ]),
        ]
    );
    assert_eq!(o.summary.entities[0].unrepresentable["n"], 1);
    assert_eq!(o.summary.status, "success");
}

#[test]
fn unsigned_values_above_i64_max_compare_with_signed_ones() {
    // Regression: BIGINT UNSIGNED values above i64::MAX against Int64 aborted the run.
    let source = batch(vec![
        (
            "id",
            Arc::new(UInt64Array::from(vec![1, u64::MAX])) as ArrayRef,
        ),
        ("n", Arc::new(UInt64Array::from(vec![u64::MAX, 5]))),
    ]);
    let replica = batch(vec![
        (
            "id",
            Arc::new(Int64Array::from(vec![1, i64::MAX])) as ArrayRef,
        ),
        ("n", Arc::new(Int64Array::from(vec![-1, 5]))),
    ]);
    let o = run_case("key = [\"id\"]", &source, &replica);
    let d = discrepancies(&o);
    let kinds: Vec<(&str, &str, &str)> = d
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str(), r[6].as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("{\"id\":1}", "field_mismatch", "unrepresentable"),
            ("{\"id\":9223372036854775807}", "extra_in_replica", ""),
            (
                "{\"id\":18446744073709551615}",
                "missing_in_replica",
                "unrepresentable"
            ),
        ]
    );
    assert_eq!(d[0][3], "18446744073709551615");
    assert_eq!(d[0][4], "-1");
    assert_eq!(d[2][2], "id", "the withheld insert names the column");
}

#[test]
fn corrections_are_exact_or_withheld() {
    // Regression: corrections were rounded to the target's scale and unit.
    let source = batch(vec![
        ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
        (
            "amount",
            Arc::new(
                Decimal128Array::from(vec![12345, 12300, 1])
                    .with_precision_and_scale(10, 4)
                    .unwrap(),
            ),
        ),
        (
            "at",
            Arc::new(TimestampNanosecondArray::from(vec![
                1_000, 1_000_001, 1_000_000,
            ])),
        ),
    ]);
    let replica = batch(vec![
        ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
        (
            "amount",
            Arc::new(
                Decimal128Array::from(vec![123, 122, 0])
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
        ),
        (
            "at",
            Arc::new(TimestampMicrosecondArray::from(vec![1, 1000, 1000])),
        ),
    ]);
    let o = run_case("key = [\"id\"]", &source, &replica);
    let d = discrepancies(&o);
    let reasons: Vec<(&str, &str, &str, &str)> = d
        .iter()
        .map(|r| (r[0].as_str(), r[2].as_str(), r[5].as_str(), r[6].as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("{\"id\":1}", "amount", "report_only", "unrepresentable"),
            ("{\"id\":2}", "amount", "correct_replica", "numeric_delta"),
            ("{\"id\":2}", "at", "report_only", "unrepresentable"),
            ("{\"id\":3}", "amount", "report_only", "unrepresentable"),
        ]
    );
    // Key 2 is updated, its amount only, to exactly 1.23.
    let updates: Vec<&Vec<String>> = o.rows.iter().filter(|r| r.len() != 13).collect();
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0][0], "update");
    assert_eq!(updates[0][1], "[amount]");
    assert!(updates[0].contains(&"1.23".to_string()), "{:?}", updates[0]);
    assert_eq!(o.summary.entities[0].unrepresentable["amount"], 2);
    assert_eq!(o.summary.entities[0].unrepresentable["at"], 1);
}

#[test]
fn dictionary_and_date64_columns_compare_correct_and_render_events() {
    // Regression: dictionary-encoded columns were refused; Date64 aborted the events
    // writer with exit 70.
    let dict = |v: Vec<&str>| -> ArrayRef {
        Arc::new(v.into_iter().collect::<DictionaryArray<Int32Type>>())
    };
    let source = batch(vec![
        ("code", dict(vec!["a", "b", "c"])),
        ("color", dict(vec!["red", "blue", "red"])),
        (
            "day",
            Arc::new(Date64Array::from(vec![0, 86_400_000, 2 * 86_400_000])),
        ),
    ]);
    let replica = batch(vec![
        (
            "code",
            Arc::new(StringArray::from(vec!["a", "b", "d"])) as ArrayRef,
        ),
        ("color", dict(vec!["red", "green", "red"])),
        ("day", Arc::new(Date64Array::from(vec![0, 0, 0]))),
    ]);
    let o = run_case("key = [\"code\"]", &source, &replica);
    let d: Vec<(String, String, String)> = discrepancies(&o)
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        d,
        [
            s("{\"code\":\"b\"}", "field_mismatch", "color"),
            s("{\"code\":\"b\"}", "field_mismatch", "day"),
            s("{\"code\":\"c\"}", "missing_in_replica", ""),
            s("{\"code\":\"d\"}", "extra_in_replica", ""),
        ]
    );
    assert_eq!(o.events.lines().count(), 3, "{}", o.events);
    assert!(o.events.contains("\"1970-01-03\""), "{}", o.events);
    assert!(o.events.contains("\"blue\""), "{}", o.events);
}

#[test]
fn nan_and_signed_zero_keys_match_alike_on_every_plan() {
    // Regression: a NaN key swallowed another key on one plan and was reported
    // missing on another; -0.0 against 0.0 matched or not by row order.
    let source = batch(vec![
        (
            "k",
            Arc::new(Float64Array::from(vec![-0.0, 1.0, f64::NAN])) as ArrayRef,
        ),
        ("v", Arc::new(Int64Array::from(vec![1, 2, 3]))),
    ]);
    let replica = batch(vec![
        (
            "k",
            Arc::new(Float64Array::from(vec![0.0, 1.0, f64::NAN, 2.0])) as ArrayRef,
        ),
        ("v", Arc::new(Int64Array::from(vec![1, 2, 4, 5]))),
    ]);
    let o = run_case("key = [\"k\"]", &source, &replica);
    let d: Vec<(String, String)> = discrepancies(&o)
        .into_iter()
        .map(|r| (r[1].clone(), r[2].clone()))
        .collect();
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    // The order is the key's: 2.0 before NaN.
    assert_eq!(
        d,
        [s("extra_in_replica", ""), s("field_mismatch", "v")],
        "{:?}",
        discrepancies(&o)
    );
}

#[test]
fn a_correction_share_of_one_releases_every_entity() {
    // Regression: missing plus extra rows outnumbering the larger side made the share
    // exceed 1, so even max_correction_share = 1.0 tripped.
    let source = batch(vec![
        ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
        ("v", Arc::new(Int64Array::from(vec![1, 2, 3]))),
    ]);
    let replica = batch(vec![
        ("id", Arc::new(Int64Array::from(vec![4, 5, 6])) as ArrayRef),
        ("v", Arc::new(Int64Array::from(vec![1, 2, 3]))),
    ]);
    let o = run_case("key = [\"id\"]", &source, &replica);
    let g = &o.summary.entities[0].guardrail;
    assert!(!g.tripped, "{g:?}");
    assert_eq!((g.rows, g.share), (6, 1.0));
    assert_eq!(o.summary.status, "success");
    // The corrections files are there: three inserts and three deletes.
    let corrections = o.rows.iter().filter(|r| r.len() != 13).count();
    assert_eq!(corrections, 6);
}

#[test]
fn every_column_kind_compares_renders_and_corrects() {
    use arrow::array::{
        BinaryViewArray, BooleanArray, Date32Array, Decimal256Array, DurationNanosecondArray,
        FixedSizeBinaryArray, Float32Array, Int8Array, IntervalYearMonthArray, LargeBinaryArray,
        LargeStringArray, StringViewArray, Time32MillisecondArray, Time64NanosecondArray,
        TimestampMillisecondArray, UInt16Array,
    };
    use arrow::datatypes::i256;
    // One row equal, one row differing in every column; both sides of one type.
    let side = |d: bool| -> RecordBatch {
        let two = |a: i64, b: i64| if d { [a, b] } else { [a, a] };
        let [_, x] = two(1, 2);
        batch(vec![
            ("id", Arc::new(Int8Array::from(vec![1, 2])) as ArrayRef),
            ("u16", Arc::new(UInt16Array::from(vec![1, x as u16]))),
            (
                "f16",
                arrow::compute::cast(
                    &Float32Array::from(vec![1.5, if d { 2.5 } else { 1.5 }]),
                    &arrow::datatypes::DataType::Float16,
                )
                .unwrap(),
            ),
            ("f32", Arc::new(Float32Array::from(vec![1.5, x as f32]))),
            (
                "d256",
                Arc::new(
                    Decimal256Array::from(vec![i256::from_i128(1), i256::from_i128(x as i128)])
                        .with_precision_and_scale(50, 3)
                        .unwrap(),
                ),
            ),
            (
                "ls",
                Arc::new(LargeStringArray::from(vec!["a", if d { "b" } else { "a" }])),
            ),
            (
                "sv",
                Arc::new(StringViewArray::from(vec!["a", if d { "b" } else { "a" }])),
            ),
            (
                "lb",
                Arc::new(LargeBinaryArray::from(vec![&b"a"[..], &[x as u8][..]])),
            ),
            (
                "bv",
                Arc::new(BinaryViewArray::from(vec![&b"a"[..], &[x as u8][..]])),
            ),
            (
                "uuid",
                Arc::new(
                    FixedSizeBinaryArray::try_from_iter(vec![[0u8; 16], [x as u8; 16]].into_iter())
                        .unwrap(),
                ),
            ),
            ("b", Arc::new(BooleanArray::from(vec![true, !d]))),
            ("d32", Arc::new(Date32Array::from(vec![1, x as i32]))),
            (
                "t32",
                Arc::new(Time32MillisecondArray::from(vec![1, x as i32])),
            ),
            ("t64", Arc::new(Time64NanosecondArray::from(vec![1, x]))),
            ("dur", Arc::new(DurationNanosecondArray::from(vec![1, x]))),
            (
                "iv",
                Arc::new(IntervalYearMonthArray::from(vec![1, x as i32])),
            ),
            (
                "ts",
                Arc::new(TimestampMillisecondArray::from(vec![1, x]).with_timezone("+02:00")),
            ),
        ])
    };
    let o = run_case("key = [\"id\"]", &side(false), &side(true));
    let fields: Vec<String> = discrepancies(&o)
        .iter()
        .inspect(|r| {
            assert_eq!(r[0], "{\"id\":2}");
            assert_eq!(r[1], "field_mismatch");
            assert_eq!(r[5], "correct_replica", "{r:?}");
            assert!(!r[3].is_empty() && r[3] != r[4], "{r:?}");
        })
        .map(|r| r[2].clone())
        .collect();
    assert_eq!(
        fields,
        [
            "u16", "f16", "f32", "d256", "ls", "sv", "lb", "bv", "uuid", "b", "d32", "t32", "t64",
            "dur", "iv", "ts"
        ]
    );
    let d = discrepancies(&o);
    let text = |field: &str| {
        let r = d.iter().find(|r| r[2] == field).unwrap();
        (r[3].as_str(), r[4].as_str())
    };
    assert_eq!(text("d256"), ("0.001", "0.002"));
    assert_eq!(text("uuid").0, "01".repeat(16));
    assert_eq!(text("t64"), ("00:00:00.000000001", "00:00:00.000000002"));
    // Zoned timestamps render in UTC, whatever zone they were written in.
    assert_eq!(text("ts").0, "1970-01-01T00:00:00.001Z");
    let updates: Vec<&Vec<String>> = o.rows.iter().filter(|r| r.len() != 13).collect();
    assert_eq!(updates.len(), 1);
    assert_eq!(o.events.lines().count(), 1, "{}", o.events);
}

#[test]
fn nested_columns_are_an_error_naming_entity_and_column_unless_ignored() {
    use arrow::array::ListArray;
    use arrow::datatypes::Int64Type;
    let list = || -> ArrayRef {
        Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1)]),
        ]))
    };
    let side = batch(vec![
        ("id", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ("tags", list()),
    ]);
    let dir = tempfile::tempdir().unwrap();
    for system in ["src", "rep"] {
        write(
            &dir.path().join(format!(
                "lake/snapshots/{system}/t/run_date=2024-06-01/part-0.parquet"
            )),
            &side,
        );
    }
    let job_text = |extra: &str| {
        format!(
            "[job]\nname = \"j\"\nlake = \"lake\"\noutput = \"out\"\n[systems]\nsource = \"src\"\nreplica = \"rep\"\n[[entities]]\nname = \"t\"\nkey = [\"id\"]\n{extra}"
        )
    };
    let run = |extra: &str| {
        let path = dir.path().join("job.toml");
        std::fs::write(&path, job_text(extra)).unwrap();
        let job = JobConfig::load(&path).unwrap();
        let opts = RunOptions {
            run_date: recon::generate::sample_run_date(),
            run_id: None,
            entities: vec![],
            max_correction_share: None,
            target_partitions: 1,
            memory_limit: 1 << 30,
            lock: LockMode::Disabled,
            progress: false,
            export: false,
            key_plan: KeyPlan::Auto,
        };
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(recon::run::run(&job, &opts))
    };
    let e = run("").err().unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("entity `t`") && msg.contains("`tags`") && msg.contains("ignore = true"),
        "{msg}"
    );
    assert_eq!(e.exit_code(), recon::ExitCode::InputData, "{msg}");
    let o = run("fields.tags = { ignore = true }").unwrap();
    assert_eq!(o.summary.status, "success");
}

#[test]
fn keys_of_every_kind_match_on_every_plan() {
    use arrow::array::{FixedSizeBinaryArray, TimestampMillisecondArray, TimestampSecondArray};
    // A composite key of a UUID, a decimal of differing scales, a timestamp of
    // differing units and zones and a Date64; sorted, so the merge runs too.
    let uuid = |v: Vec<u8>| -> ArrayRef {
        Arc::new(FixedSizeBinaryArray::try_from_iter(v.into_iter().map(|b| [b; 16])).unwrap())
    };
    let source = batch(vec![
        ("u", uuid(vec![1, 1, 2])),
        (
            "d",
            Arc::new(
                Decimal128Array::from(vec![150, 250, 150])
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ) as ArrayRef,
        ),
        (
            "t",
            Arc::new(TimestampSecondArray::from(vec![1, 2, 3]).with_timezone("UTC")),
        ),
        ("day", Arc::new(Date64Array::from(vec![0, 0, 86_400_000]))),
        ("v", Arc::new(Int64Array::from(vec![1, 2, 3]))),
    ]);
    let replica = batch(vec![
        ("u", uuid(vec![1, 1, 3])),
        (
            "d",
            Arc::new(
                Decimal128Array::from(vec![15000, 25000, 15000])
                    .with_precision_and_scale(12, 4)
                    .unwrap(),
            ) as ArrayRef,
        ),
        (
            "t",
            Arc::new(TimestampMillisecondArray::from(vec![1000, 2000, 3000])),
        ),
        ("day", Arc::new(Date64Array::from(vec![0, 0, 86_400_000]))),
        ("v", Arc::new(Int64Array::from(vec![1, 5, 3]))),
    ]);
    let o = run_case("key = [\"u\", \"d\", \"t\", \"day\"]", &source, &replica);
    let d: Vec<(String, String)> = discrepancies(&o)
        .into_iter()
        .map(|r| (r[1].clone(), r[2].clone()))
        .collect();
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        d,
        [
            s("field_mismatch", "v"),
            s("missing_in_replica", ""),
            s("extra_in_replica", "")
        ]
    );
    let key = &discrepancies(&o)[0][0];
    assert_eq!(
        key,
        "{\"d\":2.5000,\"day\":\"1970-01-01\",\"t\":\"1970-01-01T00:00:02Z\",\"u\":\"01010101010101010101010101010101\"}"
    );
}

#[test]
fn a_file_of_nan_and_one_value_is_read_as_it_is() {
    // Regression: DataFusion read a column whose file statistics said min = max as that
    // constant; Parquet's statistics leave NaN out, so NaN and 1e20 read as 1e20 twice,
    // NaN against 1e20 compared equal and an expected value was the other row's.
    let side = |f: Vec<f64>| {
        batch(vec![
            ("k", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("f", Arc::new(Float64Array::from(f))),
        ])
    };
    let o = run_case(
        "key = [\"k\"]",
        &side(vec![f64::NAN, 1e20]),
        &side(vec![1e20, 1e20]),
    );
    let d = discrepancies(&o);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0][0].as_str(), d[0][2].as_str(), d[0][3].as_str()),
        ("{\"k\":1}", "f", "NaN")
    );
}

#[test]
fn values_swapped_between_fields_are_found() {
    // Regression: the fingerprint added the hashes of boolean and text columns, so a
    // row with two values swapped hashed like the original and was never compared.
    use arrow::array::BooleanArray;
    let side = |a: bool, b: bool, x: &str, y: &str| {
        batch(vec![
            ("k", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("a", Arc::new(BooleanArray::from(vec![a]))),
            ("b", Arc::new(BooleanArray::from(vec![b]))),
            ("x", Arc::new(StringArray::from(vec![x]))),
            ("y", Arc::new(StringArray::from(vec![y]))),
        ])
    };
    let o = run_case(
        "key = [\"k\"]",
        &side(false, true, "first", "last"),
        &side(true, false, "last", "first"),
    );
    let fields: Vec<String> = discrepancies(&o)
        .into_iter()
        .map(|r| r[2].clone())
        .collect();
    assert_eq!(fields, ["a", "b", "x", "y"]);
}
