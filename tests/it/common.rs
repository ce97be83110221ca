//! Shared helpers: copies of the sample lake in temp dirs, job files pointing at them,
//! and readers for a committed run's outputs.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use recon::write::Manifest;

/// `recon run` of a fixture's sample job for the sample run date.
pub const RUN_SAMPLE: [&str; 5] = ["run", "--job", "job.toml", "--run-date", "2024-06-01"];

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool that `scripts/tools.sh` installs below `$RECON_TOOLS` (default
/// `~/.cache/recon-tools`). Missing, it fails the test in CI (`CI=true`); elsewhere the
/// test says loudly that it skipped.
pub fn tool(rel: &str) -> Option<PathBuf> {
    let base = std::env::var_os("RECON_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/recon-tools")
        });
    let p = base.join(rel);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{} is missing: run scripts/tools.sh (make test does)",
            p.display()
        );
    }
    eprintln!(
        "SKIPPED: {} is missing; run scripts/tools.sh to install it",
        p.display()
    );
    None
}

pub fn copy_dir(from: &Path, to: &Path) {
    for rel in files_below(from) {
        let target = to.join(&rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(from.join(&rel), target).unwrap();
    }
}

/// A temp dir holding a copy of the sample lake (`lake/`) and the sample job
/// (`job.toml`) pointing at it, with outputs going to `out/`.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&repo().join("sample-data/lake"), &dir.path().join("lake"));
        let job = std::fs::read_to_string(repo().join("jobs/identity.toml"))
            .unwrap()
            .replace("lake = \"../sample-data/lake\"", "lake = \"lake\"")
            .replace("output = \"../recon-output/identity\"", "output = \"out\"");
        std::fs::write(dir.path().join("job.toml"), job).unwrap();
        Fixture { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn job(&self) -> PathBuf {
        self.path().join("job.toml")
    }
    pub fn out(&self) -> PathBuf {
        self.path().join("out")
    }
    /// The snapshot folder of one system's entity for the sample run date.
    pub fn snapshot(&self, system: &str, entity: &str) -> PathBuf {
        self.path().join(format!(
            "lake/snapshots/{system}/{entity}/run_date=2024-06-01"
        ))
    }
    pub fn edit_job(&self, f: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(self.job()).unwrap();
        std::fs::write(self.job(), f(text)).unwrap();
    }
}

pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// Every committed manifest under an output folder.
pub fn manifests(out: &Path) -> Vec<Manifest> {
    let mut found = Vec::new();
    let runs = out.join("runs");
    if !runs.exists() {
        return found;
    }
    for date in std::fs::read_dir(runs).unwrap() {
        let date = date.unwrap().path();
        if !date.is_dir() {
            continue;
        }
        for run in std::fs::read_dir(&date).unwrap() {
            let m = run.unwrap().path().join("_manifest.json");
            if m.exists() {
                found.push(serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap());
            }
        }
    }
    found.sort_by(|a: &Manifest, b: &Manifest| a.run_id.cmp(&b.run_id));
    found
}

fn text(batch: &RecordBatch, name: &str, row: usize) -> String {
    let col = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8).unwrap();
    let col = col.as_string::<i32>();
    if col.is_null(row) {
        String::new()
    } else {
        col.value(row).to_string()
    }
}

/// (entity, key, kind, field, action, reason) of every discrepancy of a run.
/// Every row of a run's discrepancy and correction files, each column but the first
/// (`run_id` in a discrepancy file) as text, file by file in (kind, entity, system)
/// order.
pub fn output_rows(out: &Path, m: &Manifest) -> Vec<Vec<String>> {
    let mut files: Vec<_> = m
        .files
        .iter()
        .filter(|f| f.kind == "discrepancies" || f.kind == "corrections")
        .collect();
    files.sort_by(|a, b| (&a.kind, &a.entity, &a.system).cmp(&(&b.kind, &b.entity, &b.system)));
    let mut rows = Vec::new();
    for f in files {
        for mut b in read_parquet(&out.join(&f.path)) {
            b.remove_column(0);
            for r in 0..b.num_rows() {
                rows.push(
                    b.columns()
                        .iter()
                        .map(|c| arrow::util::display::array_value_to_string(c, r).unwrap())
                        .collect(),
                );
            }
        }
    }
    rows
}

pub type Disc = (String, String, String, String, String, String);

pub fn discrepancies(out: &Path, m: &Manifest) -> BTreeSet<Disc> {
    let mut set = BTreeSet::new();
    for f in m.files.iter().filter(|f| f.kind == "discrepancies") {
        for b in read_parquet(&out.join(&f.path)) {
            for r in 0..b.num_rows() {
                let row = (
                    text(&b, "entity", r),
                    text(&b, "key", r),
                    text(&b, "kind", r),
                    text(&b, "field", r),
                    text(&b, "action", r),
                    text(&b, "reason", r),
                );
                assert!(set.insert(row.clone()), "discrepancy listed twice: {row:?}");
            }
        }
    }
    set
}

/// (system, entity, key json, op, changed fields joined with `;`, correction id).
pub type Corr = (String, String, String, String, String, String);

pub fn corrections(
    out: &Path,
    m: &Manifest,
    key_columns: &dyn Fn(&str) -> Vec<String>,
) -> Vec<Corr> {
    let mut rows = Vec::new();
    for f in m.files.iter().filter(|f| f.kind == "corrections") {
        let system = f.system.clone().unwrap();
        let entity = f.entity.clone().unwrap();
        let keys = key_columns(&entity);
        for b in read_parquet(&out.join(&f.path)) {
            let changed = b
                .column_by_name("changed_fields")
                .unwrap()
                .as_list::<i32>()
                .clone();
            for r in 0..b.num_rows() {
                let mut key = serde_json::Map::new();
                for k in &keys {
                    let col = b.column_by_name(k).unwrap();
                    let v = if col.data_type().is_integer() {
                        serde_json::Value::from(text(&b, k, r).parse::<i64>().unwrap())
                    } else {
                        serde_json::Value::from(text(&b, k, r))
                    };
                    key.insert(k.clone(), v);
                }
                let fields = changed.value(r);
                let fields = fields.as_string::<i32>();
                let fields: Vec<&str> = (0..fields.len()).map(|i| fields.value(i)).collect();
                rows.push((
                    system.clone(),
                    entity.clone(),
                    serde_json::Value::Object(key).to_string(),
                    text(&b, "op", r),
                    fields.join(";"),
                    text(&b, "correction_id", r),
                ));
            }
        }
    }
    rows.sort();
    rows
}

/// Minimal CSV reading for the planted lists (quoted fields, doubled quotes).
pub fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut fields = Vec::new();
            let mut cur = String::new();
            let mut quoted = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match (c, quoted) {
                    ('"', true) if chars.peek() == Some(&'"') => {
                        cur.push('"');
                        chars.next();
                    }
                    ('"', _) => quoted = !quoted,
                    (',', false) => fields.push(std::mem::take(&mut cur)),
                    (c, _) => cur.push(c),
                }
            }
            fields.push(cur);
            fields
        })
        .collect()
}

/// Every file below `dir`, as paths relative to it.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    files
}

/// Copies a local folder into a store below `prefix`.
pub async fn upload(store: &dyn ObjectStore, prefix: &str, local: &Path) {
    for rel in files_below(local) {
        let path = ObjectPath::from(format!("{prefix}/{}", rel.to_str().unwrap()));
        let bytes = std::fs::read(local.join(&rel)).unwrap();
        store.put(&path, PutPayload::from(bytes)).await.unwrap();
    }
}

/// Copies every object below `prefix` into a local folder.
pub async fn download(store: &dyn ObjectStore, prefix: &str, local: &Path) {
    let prefix = ObjectPath::from(prefix);
    let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
    for o in objects {
        let rel: Vec<String> = o
            .location
            .prefix_match(&prefix)
            .unwrap()
            .map(|p| p.as_ref().to_string())
            .collect();
        let path = local.join(rel.join("/"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes = store.get(&o.location).await.unwrap().bytes().await.unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// Exit code, stdout and stderr of a finished `recon`, for assertion messages.
pub fn describe(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The one Parquet part of an exported snapshot folder.
pub fn snapshot_part(dir: &Path) -> PathBuf {
    let parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert_eq!(parts.len(), 1, "one part in {}", dir.display());
    parts[0].clone()
}

/// A Parquet file's schema (a line per column) and rows, as a table.
pub fn schema_and_rows(file: &Path) -> String {
    let batches = read_parquet(file);
    let mut out: String = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{}: {}\n", f.name(), f.data_type()))
        .collect();
    out.push_str(
        &arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string(),
    );
    out
}
