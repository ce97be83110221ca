//! Random differential tests: generated cases run through recon on every key-summary plan
//! and compared row for row with an independent reference of the documented semantics
//! (`reference`), with a shrinker that prints a minimal failing case (`gen`).
//!
//! `make fuzz-diff SEED=… CASES=… FROM=…` runs more cases (`RECON_FUZZ_SEED`,
//! `RECON_FUZZ_CASES`, and `RECON_FUZZ_FROM`, the first case index, so that a long run
//! can be continued where an earlier one stopped: cases are independent, each made from
//! the seed and its index;
//! `RECON_FUZZ_<CLASS>=0|1` turns one class of [`generate::Classes`] on or off;
//! `RECON_FUZZ_CASE=<case seed>` runs one case).

#[path = "gen.rs"]
mod generate;
mod reference;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::*;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;
use recon::diff::plan::KeyPlan;
use recon::job::JobConfig;
use recon::run::{LockMode, RunOptions, run};

use crate::common::{manifests, read_parquet};
use generate::{Case, Classes, EntityCase, Presence};
use reference::{Corr, Disc, Expected, Table, V, read_value};

const RUN_DATE: &str = "2024-06-01";
const RUN_ID: &str = "fuzz";

/// One way of running a case.
#[derive(Clone, Copy, Debug)]
struct Config {
    plan: KeyPlan,
    partitions: usize,
}

impl Config {
    fn name(&self) -> String {
        format!("{:?}-{}", self.plan, self.partitions).to_lowercase()
    }
}

/// Every case through the merge and one other plan (join and aggregation in turn), on
/// 1 or 4 partitions (alternating with the case number, so each pair of plans meets
/// both); `RECON_FUZZ_ALL_PLANS=1`: all three plans.
fn configs(index: u64) -> Vec<Config> {
    let partitions = if index.is_multiple_of(2) { 1 } else { 4 };
    let other = if (index / 2).is_multiple_of(2) {
        KeyPlan::Join
    } else {
        KeyPlan::Aggregation
    };
    let plans = if let Ok(list) = std::env::var("RECON_FUZZ_PLANS") {
        list.split(',')
            .map(|p| p.trim().parse().expect("merge, join or aggregation"))
            .collect()
    } else if std::env::var("RECON_FUZZ_ALL_PLANS").is_ok_and(|v| v == "1") {
        vec![KeyPlan::Merge, KeyPlan::Join, KeyPlan::Aggregation]
    } else {
        vec![KeyPlan::Merge, other]
    };
    plans
        .into_iter()
        .map(|plan| Config { plan, partitions })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Writing a case's snapshots.

fn array(t: &DataType, vals: &[V]) -> ArrayRef {
    let ints = || {
        vals.iter().map(|v| match v {
            V::Int(i) => Some(*i),
            V::Null => None,
            v => panic!("{v:?} in {t}"),
        })
    };
    let strs: Vec<Option<&str>> = vals
        .iter()
        .map(|v| match v {
            V::Str(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    let bins: Vec<Option<&[u8]>> = vals
        .iter()
        .map(|v| match v {
            V::Bin(b) => Some(b.as_slice()),
            _ => None,
        })
        .collect();
    let i64s = || {
        vals.iter().map(|v| match v {
            V::Ts(x) | V::Date64(x) | V::Date(x) => Some(*x),
            V::Null => None,
            v => panic!("{v:?} in {t}"),
        })
    };
    let floats = || {
        vals.iter().map(|v| match v {
            V::F(x) => Some(*x),
            V::Null => None,
            v => panic!("{v:?} in {t}"),
        })
    };
    let decs = || {
        vals.iter().map(|v| match v {
            V::Dec(m, _) => Some(*m),
            V::Null => None,
            v => panic!("{v:?} in {t}"),
        })
    };
    match t {
        DataType::Dictionary(_, vt) => {
            let values = array(vt, vals);
            arrow::compute::cast(&values, t).unwrap()
        }
        DataType::Int8 => Arc::new(Int8Array::from_iter(ints().map(|x| x.map(|x| x as i8)))),
        DataType::Int16 => Arc::new(Int16Array::from_iter(ints().map(|x| x.map(|x| x as i16)))),
        DataType::Int32 => Arc::new(Int32Array::from_iter(ints().map(|x| x.map(|x| x as i32)))),
        DataType::Int64 => Arc::new(Int64Array::from_iter(ints().map(|x| x.map(|x| x as i64)))),
        DataType::UInt8 => Arc::new(UInt8Array::from_iter(ints().map(|x| x.map(|x| x as u8)))),
        DataType::UInt16 => Arc::new(UInt16Array::from_iter(ints().map(|x| x.map(|x| x as u16)))),
        DataType::UInt32 => Arc::new(UInt32Array::from_iter(ints().map(|x| x.map(|x| x as u32)))),
        DataType::UInt64 => Arc::new(UInt64Array::from_iter(ints().map(|x| x.map(|x| x as u64)))),
        DataType::Float16 => {
            let wide: ArrayRef = Arc::new(Float64Array::from_iter(floats()));
            arrow::compute::cast(&wide, t).unwrap()
        }
        DataType::Float32 => Arc::new(Float32Array::from_iter(
            floats().map(|x| x.map(|x| x as f32)),
        )),
        DataType::Float64 => Arc::new(Float64Array::from_iter(floats())),
        DataType::Decimal128(p, s) => Arc::new(
            Decimal128Array::from_iter(decs().map(|m| m.map(|m| m.to_i128().unwrap())))
                .with_precision_and_scale(*p, *s)
                .unwrap(),
        ),
        DataType::Decimal256(p, s) => Arc::new(
            Decimal256Array::from_iter(decs())
                .with_precision_and_scale(*p, *s)
                .unwrap(),
        ),
        DataType::Utf8 => Arc::new(StringArray::from(strs)),
        DataType::LargeUtf8 => Arc::new(LargeStringArray::from(strs)),
        DataType::Utf8View => Arc::new(StringViewArray::from(strs)),
        DataType::Binary => Arc::new(BinaryArray::from(bins)),
        DataType::LargeBinary => Arc::new(LargeBinaryArray::from(bins)),
        DataType::BinaryView => Arc::new(BinaryViewArray::from(bins)),
        DataType::FixedSizeBinary(n) => Arc::new(
            FixedSizeBinaryArray::try_from_sparse_iter_with_size(bins.into_iter(), *n).unwrap(),
        ),
        DataType::Boolean => Arc::new(BooleanArray::from(
            vals.iter()
                .map(|v| match v {
                    V::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )),
        DataType::Date32 => Arc::new(Date32Array::from_iter(i64s().map(|x| x.map(|x| x as i32)))),
        DataType::Date64 => Arc::new(Date64Array::from_iter(i64s())),
        DataType::Timestamp(u, z) => {
            let a: ArrayRef = match u {
                TimeUnit::Second => Arc::new(TimestampSecondArray::from_iter(i64s())),
                TimeUnit::Millisecond => Arc::new(TimestampMillisecondArray::from_iter(i64s())),
                TimeUnit::Microsecond => Arc::new(TimestampMicrosecondArray::from_iter(i64s())),
                TimeUnit::Nanosecond => Arc::new(TimestampNanosecondArray::from_iter(i64s())),
            };
            arrow::compute::cast(&a, &DataType::Timestamp(*u, z.clone())).unwrap()
        }
        t => panic!("cannot write {t}"),
    }
}

fn write_side(dir: &Path, e: &EntityCase, source: bool) {
    let (system, rows, file_of, files) = if source {
        (
            reference::SOURCE,
            &e.source_rows,
            &e.source_file_of,
            e.source_files,
        )
    } else {
        (
            reference::REPLICA,
            &e.replica_rows,
            &e.replica_file_of,
            e.replica_files,
        )
    };
    let folder = dir.join(format!(
        "lake/snapshots/{system}/{}/run_date={RUN_DATE}",
        e.name
    ));
    std::fs::create_dir_all(&folder).unwrap();
    let cols: Vec<(usize, Field)> = e
        .cols
        .iter()
        .enumerate()
        .filter(|(_, c)| match c.presence {
            Presence::Both => true,
            Presence::SourceOnly => source,
            Presence::ReplicaOnly => !source,
        })
        .map(|(i, c)| {
            let f = if source {
                Field::new(&c.source, c.ts.clone(), c.null_s)
            } else {
                Field::new(&c.replica, c.tr.clone(), c.null_r)
            };
            (i, f)
        })
        .collect();
    let schema = Arc::new(Schema::new(
        cols.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(),
    ));
    for file in 0..files {
        let mine: Vec<&Vec<V>> = rows
            .iter()
            .zip(file_of)
            .filter(|(_, f)| **f == file)
            .map(|(r, _)| r)
            .collect();
        let columns: Vec<ArrayRef> = cols
            .iter()
            .map(|(i, f)| {
                let vals: Vec<V> = mine.iter().map(|r| r[*i].clone()).collect();
                array(f.data_type(), &vals)
            })
            .collect();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(e.row_group))
            .build();
        let out = std::fs::File::create(folder.join(format!("part-{file}.parquet"))).unwrap();
        let mut w = ArrowWriter::try_new(out, Arc::clone(&schema), Some(props)).unwrap();
        if !mine.is_empty() {
            let batch = RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
            w.write(&batch).unwrap();
        }
        w.close().unwrap();
    }
}

/// A side's snapshot read back from its files, as the reference sees it.
fn read_side(dir: &Path, e: &EntityCase, source: bool) -> Table {
    let system = if source {
        reference::SOURCE
    } else {
        reference::REPLICA
    };
    let folder = dir.join(format!(
        "lake/snapshots/{system}/{}/run_date={RUN_DATE}",
        e.name
    ));
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    files.sort();
    let mut table = Table {
        names: vec![],
        types: vec![],
        rows: vec![],
    };
    for f in files {
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap()).unwrap();
        let schema = builder.schema().clone();
        table.names = schema.fields().iter().map(|f| f.name().clone()).collect();
        table.types = schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        for b in builder.build().unwrap() {
            let b = b.unwrap();
            for r in 0..b.num_rows() {
                table.rows.push(
                    b.columns()
                        .iter()
                        .map(|c| read_value(c.as_ref(), r))
                        .collect(),
                );
            }
        }
    }
    table
}

// ---------------------------------------------------------------------------------------
// Reading recon's outputs.

fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let c = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let c = arrow::compute::cast(c, &DataType::Utf8).unwrap();
    let c = c.as_string::<i32>();
    (0..c.len())
        .map(|i| c.is_valid(i).then(|| c.value(i).to_string()))
        .collect()
}

/// Correction rows of one file: (id, Corr).
fn read_corrections(
    path: &Path,
    payload: &[(String, DataType)],
    problems: &mut Vec<String>,
) -> Vec<(String, Corr)> {
    let mut out = Vec::new();
    for b in read_parquet(path) {
        let names: Vec<(String, DataType)> = b
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        let want: Vec<(String, DataType)> = payload.to_vec();
        let got: Vec<(String, DataType)> = names
            .iter()
            .filter(|(n, _)| {
                !["correction_id", "op", "changed_fields", "expected"].contains(&n.as_str())
            })
            .cloned()
            .collect();
        if got != want {
            problems.push(format!(
                "correction columns of {}: got {got:?}, expected {want:?}",
                path.display()
            ));
            return out;
        }
        let ids = strings(&b, "correction_id");
        let ops = strings(&b, "op");
        let changed = b.column_by_name("changed_fields").unwrap().as_list::<i32>();
        let expected = b.column_by_name("expected").unwrap().as_struct();
        for r in 0..b.num_rows() {
            let ch = changed.value(r);
            let ch = ch.as_string::<i32>();
            let values: Vec<(String, V)> = payload
                .iter()
                .map(|(n, _)| {
                    (
                        n.clone(),
                        read_value(b.column_by_name(n).unwrap().as_ref(), r),
                    )
                })
                .collect();
            let exp = (!expected.is_null(r)).then(|| {
                payload
                    .iter()
                    .map(|(n, _)| {
                        (
                            n.clone(),
                            read_value(expected.column_by_name(n).unwrap().as_ref(), r),
                        )
                    })
                    .collect()
            });
            out.push((
                ids[r].clone().unwrap_or_default(),
                Corr {
                    key: String::new(),
                    op: ops[r].clone().unwrap_or_default(),
                    changed: (0..ch.len()).map(|i| ch.value(i).to_string()).collect(),
                    values,
                    expected: exp,
                },
            ));
        }
    }
    out
}

/// Multiset difference of two lists of lines, as a message (None when equal).
fn diff_lines(what: &str, expected: Vec<String>, actual: Vec<String>) -> Option<String> {
    let mut exp = expected;
    let mut act = actual;
    exp.sort();
    act.sort();
    if exp == act {
        return None;
    }
    let mut missing = Vec::new();
    let mut extra = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < exp.len() || j < act.len() {
        if j == act.len() || (i < exp.len() && exp[i] < act[j]) {
            missing.push(exp[i].clone());
            i += 1;
        } else if i == exp.len() || act[j] < exp[i] {
            extra.push(act[j].clone());
            j += 1;
        } else {
            i += 1;
            j += 1;
        }
    }
    let mut m = format!("{what} differ:\n");
    for l in missing.iter().take(12) {
        m.push_str(&format!("  expected only: {l}\n"));
    }
    for l in extra.iter().take(12) {
        m.push_str(&format!("  recon only:    {l}\n"));
    }
    Some(m)
}

/// Whether a discrepancy is of a field compared as integers or decimals.
fn exact_kind(e: &EntityCase, d: &Disc) -> bool {
    let Some(f) = &d.field else { return false };
    e.cols.iter().any(|c| {
        &c.source == f
            && matches!(
                reference::kind_of(&c.ts, &c.tr),
                reference::Kind::Int | reference::Kind::Dec(_)
            )
    })
}

#[allow(clippy::too_many_arguments)]
fn check_outputs(
    exact_delta: bool,
    dir: &Path,
    out: &Path,
    case: &Case,
    expected: &[Expected],
    tables: &[(Table, Table)],
    summary: &serde_json::Value,
) -> Vec<String> {
    let mut problems = Vec::new();
    if summary["status"] != "success" {
        problems.push(format!("summary status {}", summary["status"]));
    }
    let m = manifests(out);
    if m.len() != 1 {
        problems.push(format!("{} committed runs", m.len()));
        return problems;
    }
    let m = &m[0];
    let _ = dir;
    for ((e, exp), (s, r)) in case.entities.iter().zip(expected).zip(tables) {
        let mapped = reference::mapped_columns(e, s, r);
        // corrections: id -> (system, op, key)
        let mut ids: BTreeMap<String, (String, String, String)> = BTreeMap::new();
        for system in [reference::REPLICA, reference::SOURCE] {
            let file = m.files.iter().find(|f| {
                f.kind == "corrections"
                    && f.entity.as_deref() == Some(&e.name)
                    && f.system.as_deref() == Some(system)
            });
            let want = exp.corrections.get(system);
            let got = match file {
                Some(f) => {
                    read_corrections(&out.join(&f.path), &exp.payload[system], &mut problems)
                }
                None => vec![],
            };
            if want.is_some() != file.is_some() {
                problems.push(format!(
                    "{}: a correction file for {system}: expected {}, recon {}",
                    e.name,
                    want.is_some(),
                    file.is_some()
                ));
            }
            let to_replica = system == reference::REPLICA;
            let mut lines = Vec::new();
            for (id, mut c) in got {
                c.key = reference::correction_key(&mapped, &c.values, to_replica);
                if ids
                    .insert(
                        id.clone(),
                        (system.to_string(), c.op.clone(), c.key.clone()),
                    )
                    .is_some()
                {
                    problems.push(format!("{}: correction id {id} twice", e.name));
                }
                lines.push(c.line());
            }
            let want: Vec<String> = want
                .map(|w| w.iter().map(Corr::line).collect())
                .unwrap_or_default();
            if let Some(d) = diff_lines(&format!("{} corrections of {system}", e.name), want, lines)
            {
                problems.push(d);
            }
        }
        // discrepancies
        let file = m
            .files
            .iter()
            .find(|f| f.kind == "discrepancies" && f.entity.as_deref() == Some(&e.name));
        let mut got = Vec::new();
        if let Some(f) = file {
            for b in read_parquet(&out.join(&f.path)) {
                let col = |n: &str| strings(&b, n);
                let (key, kind, field, sv, rv, owner, action, reason, cid) = (
                    col("key"),
                    col("kind"),
                    col("field"),
                    col("source_value"),
                    col("replica_value"),
                    col("owner"),
                    col("action"),
                    col("reason"),
                    col("correction_id"),
                );
                let delta = b
                    .column_by_name("numeric_delta")
                    .unwrap()
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .clone();
                for i in 0..b.num_rows() {
                    let corrected_by = cid[i].as_ref().map(|id| match ids.get(id) {
                        Some((system, op, k)) => {
                            if Some(k) != key[i].as_ref() {
                                problems.push(format!(
                                    "{}: discrepancy of {:?} points at the correction of {k}",
                                    e.name, key[i]
                                ));
                            }
                            (system.clone(), op.clone())
                        }
                        None => ("?".to_string(), format!("unknown id {id}")),
                    });
                    got.push(Disc {
                        key: key[i].clone().unwrap_or_default(),
                        kind: kind[i].clone().unwrap_or_default(),
                        field: field[i].clone(),
                        source_value: sv[i].clone(),
                        replica_value: rv[i].clone(),
                        owner: owner[i].clone(),
                        action: action[i].clone().unwrap_or_default(),
                        reason: reason[i].clone(),
                        delta: delta.is_valid(i).then(|| delta.value(i)),
                        corrected_by,
                    });
                }
            }
        } else {
            problems.push(format!("{}: no discrepancy file", e.name));
        }
        let want = exp
            .discrepancies
            .iter()
            .map(|d| {
                let mut d = d.clone();
                if !exact_delta && exact_kind(e, &d) {
                    d.delta = d.delta.map(|_| 0.0);
                }
                d.line()
            })
            .collect();
        let got = got
            .into_iter()
            .map(|mut d: Disc| {
                if !exact_delta && exact_kind(e, &d) {
                    d.delta = d.delta.map(|_| 0.0);
                }
                d.line()
            })
            .collect();
        if let Some(d) = diff_lines(&format!("{} discrepancies", e.name), want, got) {
            problems.push(d);
        }
        // summary
        let ent = summary["entities"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["entity"] == e.name.as_str()));
        let Some(ent) = ent else {
            problems.push(format!("{}: not in the summary", e.name));
            continue;
        };
        let mut counts = BTreeMap::new();
        for c in ent["counts"].as_array().into_iter().flatten() {
            counts.insert(
                (
                    c["kind"].as_str().unwrap_or("").to_string(),
                    c["field"].as_str().map(str::to_string),
                ),
                c["count"].as_u64().unwrap_or(0),
            );
        }
        if counts != exp.counts {
            problems.push(format!(
                "{}: summary counts {counts:?}, expected {:?}",
                e.name, exp.counts
            ));
        }
        let mut ops = BTreeMap::new();
        if let Some(o) = ent["corrections"].as_object() {
            for (system, per_op) in o {
                for (op, n) in per_op.as_object().into_iter().flatten() {
                    ops.insert((system.clone(), op.clone()), n.as_u64().unwrap_or(0));
                }
            }
        }
        ops.retain(|_, n| *n > 0);
        if ops != exp.ops {
            problems.push(format!(
                "{}: summary corrections {ops:?}, expected {:?}",
                e.name, exp.ops
            ));
        }
        let rows = (
            ent["rows"]["source"].as_u64().unwrap_or(u64::MAX),
            ent["rows"]["replica"].as_u64().unwrap_or(u64::MAX),
        );
        if rows != exp.rows {
            problems.push(format!(
                "{}: summary rows {rows:?}, expected {:?}",
                e.name, exp.rows
            ));
        }
    }
    problems
}

/// Output file bytes by (kind, entity, system).
type OutputFiles = BTreeMap<(String, String, String), Vec<u8>>;

/// The bytes of a run's discrepancy, correction and events files (events without their
/// wall-clock `time`), by (kind, entity, system).
fn output_bytes(out: &Path) -> OutputFiles {
    let mut files = BTreeMap::new();
    for m in manifests(out) {
        for f in &m.files {
            if !["discrepancies", "corrections", "events"].contains(&f.kind.as_str()) {
                continue;
            }
            let mut bytes = std::fs::read(out.join(&f.path)).unwrap();
            if f.kind == "events" {
                let text = String::from_utf8(bytes).unwrap();
                let mut lines = String::new();
                for l in text.lines() {
                    let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                    if let Some(o) = v.as_object_mut() {
                        o.remove("time");
                    }
                    lines.push_str(&v.to_string());
                    lines.push('\n');
                }
                bytes = lines.into_bytes();
            }
            files.insert(
                (
                    f.kind.clone(),
                    f.entity.clone().unwrap_or_default(),
                    f.system.clone().unwrap_or_default(),
                ),
                bytes,
            );
        }
    }
    files
}

/// Runs a case on every config; None when recon agrees with the reference everywhere.
fn check(
    rt: &tokio::runtime::Runtime,
    classes: &Classes,
    case: &Case,
    configs: &[Config],
) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    for e in &case.entities {
        write_side(dir.path(), e, true);
        write_side(dir.path(), e, false);
    }
    let tables: Vec<(Table, Table)> = case
        .entities
        .iter()
        .map(|e| {
            (
                read_side(dir.path(), e, true),
                read_side(dir.path(), e, false),
            )
        })
        .collect();
    let expected: Vec<Expected> = case
        .entities
        .iter()
        .zip(&tables)
        .map(|(e, (s, r))| reference::expect(e, s, r))
        .collect();
    let mut first: Option<(Config, OutputFiles)> = None;
    for cfg in configs {
        let out_name = format!("out-{}", cfg.name());
        let job_path = dir.path().join(format!("job-{}.toml", cfg.name()));
        std::fs::write(&job_path, case.toml(&out_name)).unwrap();
        let opts = RunOptions {
            run_date: RUN_DATE.parse().unwrap(),
            run_id: Some(RUN_ID.into()),
            entities: vec![],
            max_correction_share: None,
            target_partitions: cfg.partitions,
            memory_limit: 1 << 30,
            lock: LockMode::Disabled,
            progress: false,
            export: false,
            key_plan: cfg.plan,
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(async {
                let job = JobConfig::load(&job_path).map_err(|e| format!("job: {e}"))?;
                run(&job, &opts).await.map_err(|e| format!("run: {e}"))
            })
        }));
        let outcome = match outcome {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Some(format!("[{}] recon failed: {e}", cfg.name())),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                return Some(format!("[{}] recon panicked: {msg}", cfg.name()));
            }
        };
        let summary = serde_json::to_value(&outcome.summary).unwrap();
        let out = dir.path().join(&out_name);
        let problems = check_outputs(
            classes.exact_delta,
            dir.path(),
            &out,
            case,
            &expected,
            &tables,
            &summary,
        );
        if !problems.is_empty() {
            return Some(format!("[{}] {}", cfg.name(), problems.join("\n")));
        }
        let bytes = output_bytes(&out);
        match &first {
            None => first = Some((*cfg, bytes)),
            Some((c0, b0)) => {
                if *b0 != bytes {
                    let keys: Vec<_> = b0
                        .keys()
                        .chain(bytes.keys())
                        .filter(|k| b0.get(*k) != bytes.get(*k))
                        .collect();
                    return Some(format!(
                        "[{}] output files differ from [{}]'s: {keys:?}",
                        cfg.name(),
                        c0.name()
                    ));
                }
            }
        }
    }
    None
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    Some(if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16).unwrap()
    } else {
        v.parse().unwrap()
    })
}

const SHARDS: u64 = 4;
const DEFAULT_SEED: u64 = 0x5EED_2024_0601;
const DEFAULT_CASES: u64 = 2000;

/// Runs this shard's share of the cases; panics with the minimal failing case.
fn run_shard(shard: u64) {
    let classes = Classes::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let one = env_u64("RECON_FUZZ_CASE");
    let base = env_u64("RECON_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let total = env_u64("RECON_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
    let indices: Vec<u64> = match one {
        Some(_) if shard > 0 => vec![],
        Some(_) => vec![0],
        None => {
            let from = env_u64("RECON_FUZZ_FROM").unwrap_or(0);
            (from + shard..from + total)
                .step_by(SHARDS as usize)
                .collect()
        }
    };
    let started = std::time::Instant::now();
    for (n, &i) in indices.iter().enumerate() {
        if n > 0 && n % 1000 == 0 {
            // Progress of a long `make fuzz-diff` run (shown with --nocapture).
            eprintln!("differential shard {shard}: {n} cases passed (up to case {i})",);
        }
        let seed = one.unwrap_or_else(|| generate::case_seed(base, i));
        let case = generate::case(seed, &classes);
        let cfgs = configs(i);
        if let Some(failure) = check(&rt, &classes, &case, &cfgs) {
            let (min, why) = generate::shrink(case, failure, &mut |c: &Case| {
                check(&rt, &classes, c, &cfgs)
            });
            panic!(
                "differential case {i} (RECON_FUZZ_SEED={base:#x}; RECON_FUZZ_CASE={seed:#x}; \
                 configs {:?}; classes {classes:?}) fails:\n{why}\n\nminimal case:\n{}",
                cfgs.iter().map(Config::name).collect::<Vec<_>>(),
                min.describe()
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "differential shard {shard}: {} cases in {secs:.1}s ({:.1} cases/s)",
        indices.len(),
        indices.len() as f64 / secs.max(1e-9)
    );
}

#[test]
fn differential_shard_0() {
    run_shard(0);
}

#[test]
fn differential_shard_1() {
    run_shard(1);
}

#[test]
fn differential_shard_2() {
    run_shard(2);
}

#[test]
fn differential_shard_3() {
    run_shard(3);
}
