//! Job files: the raw TOML form (`deny_unknown_fields`) and the validated [`JobConfig`]
//! it becomes in one `TryFrom`, before any snapshot is read; the exporters' part in
//! [`exporters`].

pub mod exporters;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};
use exporters::{
    ExportSpec, ExporterConfig, RawEntityExport, RawExporter, parse_entity_export, parse_exporter,
};

/// Share of an entity's rows that corrections may touch before the guardrail trips.
pub const DEFAULT_MAX_CORRECTION_SHARE: f64 = 0.05;
/// Largest drop of a snapshot's row count against the previous committed run (share).
pub const DEFAULT_MAX_ROW_DROP: f64 = 0.5;

/// Guardrail limits, from `[guardrails]` or an entity's own keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guardrails {
    pub max_correction_share: f64,
    pub max_row_drop: f64,
}

impl Default for Guardrails {
    fn default() -> Self {
        Guardrails {
            max_correction_share: DEFAULT_MAX_CORRECTION_SHARE,
            max_row_drop: DEFAULT_MAX_ROW_DROP,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw form, exactly as written in the file.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobFile {
    job: RawJob,
    systems: RawSystems,
    #[serde(default)]
    guardrails: RawGuardrails,
    #[serde(default)]
    exporters: BTreeMap<String, Spanned<RawExporter>>,
    #[serde(default)]
    entities: Vec<Spanned<RawEntity>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Spanned<String>,
    lake: Spanned<String>,
    output: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSystems {
    source: Spanned<String>,
    replica: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuardrails {
    max_correction_share: Option<Spanned<f64>>,
    max_row_drop: Option<Spanned<f64>>,
}

/// One `[[entities]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntity {
    name: String,
    key: Vec<String>,
    #[serde(default)]
    depends_on: Vec<String>,
    deletes: Option<RawDeletes>,
    #[serde(default)]
    fields: BTreeMap<String, Spanned<RawField>>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    snapshots: RawSnapshots,
    max_correction_share: Option<f64>,
    max_row_drop: Option<f64>,
    #[serde(default)]
    export: BTreeMap<String, Spanned<RawEntityExport>>,
    version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeletes {
    policy: String,
    column: Option<String>,
    deleted_value: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnapshots {
    source: Option<String>,
    replica: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    owner: Option<String>,
    by: Option<String>,
    #[serde(default)]
    ignore: bool,
    compare: Option<OneOrMany>,
    abs_tol: Option<f64>,
    rel_tol: Option<f64>,
    precision: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

// ---------------------------------------------------------------------------------------
// Validated form.
// ---------------------------------------------------------------------------------------

/// A validated job: names checked, rules parsed, entities in dependency order.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// The job file, for error messages.
    pub path: PathBuf,
    pub name: String,
    /// Lake URL, absolute (`file:///…`, `s3://…`, `memory://…`).
    pub lake: String,
    /// Output prefix URL; defaults to `{lake}/recon/{name}`.
    pub output: String,
    pub source: String,
    pub replica: String,
    /// How each system is exported, by system name; a system without one is read as an
    /// existing snapshot.
    pub exporters: BTreeMap<String, ExporterConfig>,
    /// Entities, parents before children (topological order of `depends_on`).
    pub entities: Vec<EntityConfig>,
}

#[derive(Debug, Clone)]
pub struct EntityConfig {
    pub name: String,
    /// Line of the entity's table in the job file.
    pub line: usize,
    /// Key columns, source names.
    pub key: Vec<String>,
    pub depends_on: Vec<String>,
    pub deletes: DeletePolicy,
    /// Rules for named fields (source names); unnamed fields get [`FieldRule::default`].
    pub fields: BTreeMap<String, FieldRule>,
    /// Source column name → replica column name.
    pub rename: BTreeMap<String, String>,
    /// Snapshot URL overrides; `None` means the lake's default layout.
    pub source_snapshot: Option<String>,
    pub replica_snapshot: Option<String>,
    pub max_correction_share: f64,
    /// The run's guardrail trips when a snapshot has fewer than (1 − this) × the rows it
    /// had in the previous committed run.
    pub max_row_drop: f64,
    /// What the export stage reads for this entity, by system name (systems whose
    /// exporter writes snapshots only).
    pub exports: BTreeMap<String, ExportSpec>,
    /// A version or updated-at column (source name): when set, apply guards an update or
    /// delete on this column alone instead of on every column the snapshot saw.
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeletePolicy {
    /// Delete phantom rows from the replica.
    Hard,
    /// Mark phantom rows deleted through `column`; rows so marked count as absent.
    /// A boolean column is "deleted" when it equals `deleted_value` (default true);
    /// a date or timestamp column is "deleted" when not null.
    Soft {
        column: String,
        deleted_value: Option<bool>,
    },
    /// Never delete: phantom rows are reported only.
    Report,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldRule {
    pub owner: Owner,
    pub ignore: bool,
    pub compare: CompareRule,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum Owner {
    #[default]
    Source,
    Replica,
    /// The side whose `by` column is later wins; ties and nulls go to the source.
    Newest {
        by: String,
    },
    /// Report only, never correct.
    None,
}

impl Owner {
    pub fn as_str(&self) -> &'static str {
        match self {
            Owner::Source => "source",
            Owner::Replica => "replica",
            Owner::Newest { .. } => "newest",
            Owner::None => "none",
        }
    }
}

/// How two values of one field are compared. The default is exact and null-safe.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompareRule {
    pub case_insensitive: bool,
    pub trim: bool,
    pub null_equals_empty: bool,
    /// Absolute tolerance, kept as written so decimal boundaries compare exactly.
    pub abs_tol: Option<Tolerance>,
    /// Relative tolerance, kept as written like `abs_tol`.
    pub rel_tol: Option<Tolerance>,
    /// Timestamps are truncated to this unit before comparison.
    pub precision: Option<arrow::datatypes::TimeUnit>,
}

impl CompareRule {
    pub fn is_textual(&self) -> bool {
        self.case_insensitive || self.trim || self.null_equals_empty
    }
    pub fn is_numeric(&self) -> bool {
        self.abs_tol.is_some() || self.rel_tol.is_some()
    }
}

/// A non-negative decimal tolerance: `mantissa × 10^-scale`, plus its `f64` value. The
/// decimal is the shortest text that reads back as the job's number, which is what the
/// user wrote: integers and decimals are compared against it exactly, floats against
/// `value` in f64 arithmetic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub value: f64,
    pub mantissa: i128,
    pub scale: u32,
}

impl Tolerance {
    pub fn from_f64(value: f64) -> Option<Self> {
        if !value.is_finite() || value < 0.0 {
            return None;
        }
        // The shortest representation that round-trips is what the user wrote.
        let text = format!("{value}");
        let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
        if text.contains('e') || frac.len() > 30 {
            return None;
        }
        let digits = format!("{int}{frac}");
        let mantissa = digits.parse::<i128>().ok()?;
        Some(Tolerance {
            value,
            mantissa,
            scale: frac.len() as u32,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------------------

impl JobConfig {
    /// Reads, parses and validates a job file.
    pub fn load(path: &Path) -> Result<Self> {
        use std::io::Read;
        let read_error = |source| Error::JobRead {
            path: path.to_path_buf(),
            source,
        };
        // Read at most one byte past the cap: `--job /dev/zero` must not fill memory.
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(read_error)?
            .take(MAX_JOB_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_JOB_BYTES {
            return Err(Error::Job {
                path: path.to_path_buf(),
                line: 1,
                message: format!(
                    "the job file is larger than {} MiB; a job file is a few kilobytes of TOML",
                    MAX_JOB_BYTES >> 20
                ),
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            let offset = e.utf8_error().valid_up_to();
            let valid = std::str::from_utf8(&e.as_bytes()[..offset]).unwrap_or_default();
            Error::Job {
                path: path.to_path_buf(),
                line: line_of(valid, offset),
                message: format!(
                    "not UTF-8 text: byte offset {offset} (0x{:02x}) starts no UTF-8 character; save the file as UTF-8",
                    e.as_bytes()[offset]
                ),
            }
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates job text; `path` is used for messages and relative URLs.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let raw: RawJobFile = toml::from_str(text).map_err(|e| Error::Job {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            message: e.message().to_string(),
        })?;
        let cx = Cx::new(path, text);
        cx.validate(raw)
    }

    pub fn entity(&self, name: &str) -> Option<&EntityConfig> {
        self.entities.iter().find(|e| e.name == name)
    }

    /// The job with the command line's lake and output prefix (URLs or paths, relative
    /// to the working directory) in place of the file's. A lake given without an output
    /// prefix takes the outputs with it, to `{lake}/recon/{name}` as in a job file
    /// without `output`, even when the file names one: a run on another lake never
    /// writes into, or takes the lock of, the job file's outputs.
    pub fn relocated(self, lake: Option<&str>, output: Option<&str>) -> Result<Self> {
        let cwd = Path::new(".");
        let lake = lake
            .map(|l| crate::store::resolve_url(l, cwd))
            .transpose()?;
        let output = match (output, &lake) {
            (Some(o), _) => crate::store::resolve_url(o, cwd)?,
            (None, Some(lake)) => default_output(lake, &self.name),
            (None, None) => self.output,
        };
        Ok(JobConfig {
            lake: lake.unwrap_or(self.lake),
            output,
            ..self
        })
    }

    /// Checks entity names given on the command line (`--entity`).
    pub fn check_entities(&self, names: &[String]) -> Result<()> {
        match names.iter().find(|n| self.entity(n).is_none()) {
            None => Ok(()),
            Some(name) => Err(Error::Usage(format!(
                "entity `{name}` is not in job {} (entities: {})",
                self.path.display(),
                self.entities
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Checks a system name given on the command line (`--system`): the job's source or
    /// replica.
    pub fn check_system(&self, system: &str) -> Result<()> {
        if system == self.source || system == self.replica {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "system `{system}` is not in job {} (systems: {}, {})",
                self.path.display(),
                self.source,
                self.replica
            )))
        }
    }
}

/// The output prefix of a job file without `output`: `{lake}/recon/{name}`.
pub fn default_output(lake: &str, name: &str) -> String {
    format!("{}/recon/{name}", lake.trim_end_matches('/'))
}

/// The largest job file recon reads.
const MAX_JOB_BYTES: u64 = 16 << 20;

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

struct Cx<'a> {
    path: &'a Path,
    /// Offsets of the text's newlines, so that a line is found in log time: a job of
    /// 40,000 entities is validated in linear time, not quadratic.
    newlines: Vec<usize>,
}

impl<'a> Cx<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        Cx {
            path,
            newlines: text.match_indices('\n').map(|(i, _)| i).collect(),
        }
    }

    fn err(&self, offset: usize, message: impl Into<String>) -> Error {
        Error::Job {
            path: self.path.to_path_buf(),
            line: self.line(offset),
            message: message.into(),
        }
    }

    /// The 1-based line of byte `offset`.
    fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&n| n < offset) + 1
    }

    fn validate(&self, raw: RawJobFile) -> Result<JobConfig> {
        let name = check_name(raw.job.name.get_ref())
            .map_err(|m| self.err(raw.job.name.span().start, m))?;
        let source = check_name(raw.systems.source.get_ref())
            .map_err(|m| self.err(raw.systems.source.span().start, m))?;
        let replica = check_name(raw.systems.replica.get_ref())
            .map_err(|m| self.err(raw.systems.replica.span().start, m))?;
        if source == replica {
            return Err(self.err(
                raw.systems.replica.span().start,
                "systems.source and systems.replica must differ",
            ));
        }
        let base = self.path.parent().unwrap_or(Path::new("."));
        let lake = crate::store::resolve_url(raw.job.lake.get_ref(), base)
            .map_err(|e| self.err(raw.job.lake.span().start, e.to_string()))?;
        let output = match &raw.job.output {
            Some(o) => crate::store::resolve_url(o.get_ref(), base)
                .map_err(|e| self.err(o.span().start, e.to_string()))?,
            None => default_output(&lake, &name),
        };
        let mut defaults = Guardrails::default();
        if let Some(s) = raw.guardrails.max_correction_share {
            defaults.max_correction_share = check_share(*s.get_ref(), "max_correction_share")
                .map_err(|m| self.err(s.span().start, m))?;
        }
        if let Some(s) = raw.guardrails.max_row_drop {
            defaults.max_row_drop = check_share(*s.get_ref(), "max_row_drop")
                .map_err(|m| self.err(s.span().start, m))?;
        }
        if raw.entities.is_empty() {
            return Err(self.err(0, "the job declares no [[entities]]"));
        }
        let mut exporters = BTreeMap::new();
        for (system, spanned) in raw.exporters {
            let start = spanned.span().start;
            if system != source && system != replica {
                return Err(self.err(
                    start,
                    format!(
                        "exporters.{system}: `{system}` is neither systems.source (`{source}`) nor systems.replica (`{replica}`)"
                    ),
                ));
            }
            let exporter = parse_exporter(&system, spanned.into_inner(), self.line(start))
                .map_err(|m| self.err(start, format!("exporters.{system}: {m}")))?;
            exporters.insert(system, exporter);
        }
        let mut entities = Vec::with_capacity(raw.entities.len());
        for spanned in raw.entities {
            let start = spanned.span().start;
            let e = spanned.into_inner();
            entities.push(self.entity(e, start, defaults, base, &exporters)?);
        }
        let entities = self.order(entities)?;
        Ok(JobConfig {
            path: self.path.to_path_buf(),
            name,
            lake,
            output,
            source,
            replica,
            exporters,
            entities,
        })
    }

    fn entity(
        &self,
        raw: RawEntity,
        start: usize,
        defaults: Guardrails,
        base: &Path,
        exporters: &BTreeMap<String, ExporterConfig>,
    ) -> Result<EntityConfig> {
        let line = self.line(start);
        let at = |m: String| Error::Job {
            path: self.path.to_path_buf(),
            line,
            message: m,
        };
        let name = check_name(&raw.name).map_err(at)?;
        let ctx = |m: String| at(format!("entity `{name}`: {m}"));
        if raw.key.is_empty() {
            return Err(ctx("key must name at least one column".into()));
        }
        let mut seen = BTreeSet::new();
        for k in &raw.key {
            if !seen.insert(k) {
                return Err(ctx(format!("key column `{k}` is listed twice")));
            }
        }
        let deletes = match raw.deletes {
            None => DeletePolicy::Hard,
            Some(d) => match (d.policy.as_str(), d.column, d.deleted_value) {
                ("hard", None, None) => DeletePolicy::Hard,
                ("report", None, None) => DeletePolicy::Report,
                ("soft", Some(column), deleted_value) => DeletePolicy::Soft {
                    column,
                    deleted_value,
                },
                ("soft", None, _) => {
                    return Err(ctx("deletes.policy = \"soft\" needs deletes.column".into()));
                }
                ("hard" | "report", _, _) => {
                    return Err(ctx(format!(
                        "deletes.column and deletes.deleted_value only apply to policy \"soft\", not \"{}\"",
                        d.policy
                    )));
                }
                (other, _, _) => {
                    return Err(ctx(format!(
                        "unknown deletes.policy \"{other}\" (expected hard, soft or report)"
                    )));
                }
            },
        };
        let mut fields = BTreeMap::new();
        for (field, spanned) in raw.fields {
            let fline = self.line(spanned.span().start);
            let rule = parse_field(spanned.into_inner()).map_err(|m| Error::Job {
                path: self.path.to_path_buf(),
                line: fline,
                message: format!("entity `{name}`, field `{field}`: {m}"),
            })?;
            if raw.key.contains(&field) {
                return Err(Error::Job {
                    path: self.path.to_path_buf(),
                    line: fline,
                    message: format!(
                        "entity `{name}`, field `{field}`: key columns are compared exactly and take no rules"
                    ),
                });
            }
            fields.insert(field, rule);
        }
        let mut targets = BTreeSet::new();
        for (from, to) in &raw.rename {
            if !targets.insert(to) {
                return Err(ctx(format!(
                    "rename maps two columns to replica column `{to}` (second: `{from}`)"
                )));
            }
        }
        // Every column the job names, with what names it: a rename onto one of them
        // (kept under its own name) would map two job columns onto one replica column.
        let mut named: Vec<(&str, &str)> =
            raw.key.iter().map(|k| (k.as_str(), "key column")).collect();
        for (field, rule) in &fields {
            named.push((field.as_str(), "field"));
            if let Owner::Newest { by } = &rule.owner {
                named.push((by.as_str(), "`by` column"));
            }
        }
        if let DeletePolicy::Soft { column, .. } = &deletes {
            named.push((column.as_str(), "soft-delete column"));
        }
        if let Some(v) = &raw.version {
            named.push((v.as_str(), "version column"));
        }
        for (from, to) in &raw.rename {
            if let Some((_, what)) = named
                .iter()
                .find(|(n, _)| *n == to.as_str() && to != from && !raw.rename.contains_key(*n))
            {
                return Err(ctx(format!(
                    "rename maps `{from}` to replica column `{to}`, which is also the {what} `{to}`: two columns of the job would be compared with one replica column"
                )));
            }
        }
        let max_correction_share = match raw.max_correction_share {
            Some(s) => check_share(s, "max_correction_share").map_err(ctx)?,
            None => defaults.max_correction_share,
        };
        let max_row_drop = match raw.max_row_drop {
            Some(s) => check_share(s, "max_row_drop").map_err(ctx)?,
            None => defaults.max_row_drop,
        };
        let snapshot = |u: Option<String>| -> Result<Option<String>> {
            u.map(|u| crate::store::resolve_url(&u, base).map_err(|e| ctx(e.to_string())))
                .transpose()
        };
        let mut raw_exports = raw.export;
        let mut exports = BTreeMap::new();
        for (system, spanned) in &raw_exports {
            if !exporters.contains_key(system) {
                return Err(Error::Job {
                    path: self.path.to_path_buf(),
                    line: self.line(spanned.span().start),
                    message: format!(
                        "entity `{name}`: export.{system} needs an [exporters.{system}] table"
                    ),
                });
            }
        }
        for (system, exporter) in exporters {
            let spanned = raw_exports.remove(system);
            let eline = spanned
                .as_ref()
                .map(|s| self.line(s.span().start))
                .unwrap_or(line);
            let resolve = |u: &str| crate::store::resolve_url(u, base).map_err(|e| e.to_string());
            let spec =
                parse_entity_export(&name, exporter, spanned.map(Spanned::into_inner), &resolve)
                    .map_err(|m| Error::Job {
                        path: self.path.to_path_buf(),
                        line: eline,
                        message: format!("entity `{name}`: {m}"),
                    })?;
            if let Some(spec) = spec {
                exports.insert(system.clone(), spec);
            }
        }
        if let Some(v) = &raw.version
            && raw.key.contains(v)
        {
            return Err(ctx(format!("version column `{v}` cannot be a key column")));
        }
        Ok(EntityConfig {
            version: raw.version,
            exports,
            source_snapshot: snapshot(raw.snapshots.source)?,
            replica_snapshot: snapshot(raw.snapshots.replica)?,
            name,
            line,
            key: raw.key,
            depends_on: raw.depends_on,
            deletes,
            fields,
            rename: raw.rename,
            max_correction_share,
            max_row_drop,
        })
    }

    /// Checks `depends_on` and returns the entities parents first, stable otherwise.
    fn order(&self, entities: Vec<EntityConfig>) -> Result<Vec<EntityConfig>> {
        let mut index = HashMap::new();
        for (i, e) in entities.iter().enumerate() {
            if index.insert(e.name.clone(), i).is_some() {
                return Err(Error::Job {
                    path: self.path.to_path_buf(),
                    line: e.line,
                    message: format!("entity `{}` is declared twice", e.name),
                });
            }
        }
        for e in &entities {
            for d in &e.depends_on {
                if !index.contains_key(d) {
                    return Err(Error::Job {
                        path: self.path.to_path_buf(),
                        line: e.line,
                        message: format!(
                            "entity `{}`: depends_on names unknown entity `{d}`",
                            e.name
                        ),
                    });
                }
            }
        }
        // Kahn's algorithm, taking the first-declared entity among those ready: the
        // apply order is the declaration order wherever dependencies allow.
        let mut done: Vec<bool> = vec![false; entities.len()];
        let mut waiting: Vec<usize> = entities
            .iter()
            .map(|e| {
                e.depends_on
                    .iter()
                    .collect::<std::collections::HashSet<_>>()
                    .len()
            })
            .collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); entities.len()];
        for (i, e) in entities.iter().enumerate() {
            let mut seen = std::collections::HashSet::new();
            for d in &e.depends_on {
                if seen.insert(d) {
                    dependents[index[d]].push(i);
                }
            }
        }
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = waiting
            .iter()
            .enumerate()
            .filter(|(_, w)| **w == 0)
            .map(|(i, _)| std::cmp::Reverse(i))
            .collect();
        let mut order = Vec::with_capacity(entities.len());
        while order.len() < entities.len() {
            match ready.pop() {
                Some(std::cmp::Reverse(i)) => {
                    done[i] = true;
                    order.push(i);
                    for &j in &dependents[i] {
                        waiting[j] -= 1;
                        if waiting[j] == 0 {
                            ready.push(std::cmp::Reverse(j));
                        }
                    }
                }
                None => {
                    let stuck = entities
                        .iter()
                        .zip(&done)
                        .find(|(_, d)| !**d)
                        .map(|(e, _)| e)
                        .expect("an entity is left");
                    return Err(Error::Job {
                        path: self.path.to_path_buf(),
                        line: stuck.line,
                        message: format!("entity `{}`: depends_on forms a cycle", stuck.name),
                    });
                }
            }
        }
        let mut slots: Vec<Option<EntityConfig>> = entities.into_iter().map(Some).collect();
        Ok(order
            .into_iter()
            .map(|i| slots[i].take().expect("each once"))
            .collect())
    }
}

fn parse_field(raw: RawField) -> std::result::Result<FieldRule, String> {
    let owner = match (raw.owner.as_deref(), raw.by) {
        (None | Some("source"), None) => Owner::Source,
        (Some("replica"), None) => Owner::Replica,
        (Some("none"), None) => Owner::None,
        (Some("newest"), Some(by)) => Owner::Newest { by },
        (Some("newest"), None) => {
            return Err(
                "owner = \"newest\" needs `by`, the column that says which side is newer".into(),
            );
        }
        (o @ (None | Some("source" | "replica" | "none")), Some(_)) => {
            return Err(format!(
                "`by` only applies to owner = \"newest\", not \"{}\"",
                o.unwrap_or("source")
            ));
        }
        (Some(other), _) => {
            return Err(format!(
                "unknown owner \"{other}\" (expected source, replica, newest or none)"
            ));
        }
    };
    let mut compare = CompareRule::default();
    let modes = match raw.compare {
        None => vec![],
        Some(OneOrMany::One(m)) => vec![m],
        Some(OneOrMany::Many(v)) => v,
    };
    for m in modes {
        match m.as_str() {
            "exact" => {}
            "case_insensitive" => compare.case_insensitive = true,
            "trim" => compare.trim = true,
            "null_equals_empty" => compare.null_equals_empty = true,
            other => {
                return Err(format!(
                    "unknown compare \"{other}\" (expected exact, case_insensitive, trim or null_equals_empty)"
                ));
            }
        }
    }
    if let Some(t) = raw.abs_tol {
        compare.abs_tol = Some(Tolerance::from_f64(t).ok_or_else(|| {
            format!(
                "abs_tol must be a number from 0 to 1e38 with at most 30 decimal places, got {t}"
            )
        })?);
    }
    if let Some(t) = raw.rel_tol {
        compare.rel_tol = Some(Tolerance::from_f64(t).ok_or_else(|| {
            format!(
                "rel_tol must be a number from 0 to 1e38 with at most 30 decimal places, got {t}"
            )
        })?);
    }
    if let Some(p) = raw.precision {
        use arrow::datatypes::TimeUnit;
        compare.precision = Some(match p.as_str() {
            "s" => TimeUnit::Second,
            "ms" => TimeUnit::Millisecond,
            "us" => TimeUnit::Microsecond,
            "ns" => TimeUnit::Nanosecond,
            other => {
                return Err(format!(
                    "unknown precision \"{other}\" (expected s, ms, us or ns)"
                ));
            }
        });
    }
    if raw.ignore && (raw.owner.is_some() || compare != CompareRule::default()) {
        return Err("an ignored field takes no owner or compare rules".into());
    }
    Ok(FieldRule {
        owner,
        ignore: raw.ignore,
        compare,
    })
}

/// A share in [0, 1] (guardrails), named `what` in the message.
pub fn check_share(s: f64, what: &str) -> std::result::Result<f64, String> {
    if (0.0..=1.0).contains(&s) {
        Ok(s)
    } else {
        Err(format!("{what} must be between 0 and 1, got {s}"))
    }
}

/// Names used in paths (job, systems, entities): letters, digits, `_` and `-`.
pub fn check_name(name: &str) -> std::result::Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(name.to_string())
    } else {
        Err(format!(
            "`{name}` is not a valid name (letters, digits, `_` and `-`, at most 128)"
        ))
    }
}

/// Parses one entity table on its own, as in the SQL logic tests.
pub fn parse_entity(text: &str) -> Result<EntityConfig> {
    let raw: RawEntity = toml::from_str(text).map_err(|e| Error::Job {
        path: PathBuf::from("<entity>"),
        line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
        message: e.message().to_string(),
    })?;
    let path = PathBuf::from("<entity>");
    let cx = Cx::new(&path, text);
    cx.entity(
        raw,
        0,
        Guardrails::default(),
        Path::new("."),
        &BTreeMap::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobConfig> {
        JobConfig::parse(Path::new("/jobs/t.toml"), text)
    }

    const BASE: &str = "[job]\nname = \"t\"\nlake = \"memory://lake\"\n[systems]\nsource = \"a\"\nreplica = \"b\"\n";

    #[test]
    fn unknown_key_names_line() {
        let e = parse(&format!(
            "{BASE}[[entities]]\nname = \"x\"\nkey = [\"id\"]\nkeyz = 1\n"
        ))
        .unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Usage);
        let msg = e.to_string();
        assert!(msg.starts_with("/jobs/t.toml:10:"), "{msg}");
        assert!(msg.contains("keyz"), "{msg}");
    }

    #[test]
    fn entities_are_ordered_parents_first() {
        let job = parse(&format!(
            "{BASE}[[entities]]\nname = \"c\"\nkey = [\"id\"]\ndepends_on = [\"p\"]\n[[entities]]\nname = \"p\"\nkey = [\"id\"]\n"
        ))
        .unwrap();
        let names: Vec<_> = job.entities.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["p", "c"]);
        assert_eq!(job.output, "memory://lake/recon/t");
    }

    #[test]
    fn cycle_is_an_error() {
        let e = parse(&format!(
            "{BASE}[[entities]]\nname = \"c\"\nkey = [\"id\"]\ndepends_on = [\"p\"]\n[[entities]]\nname = \"p\"\nkey = [\"id\"]\ndepends_on = [\"c\"]\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("cycle"), "{e}");
    }

    #[test]
    fn bad_rules_name_the_field_and_line() {
        let e = parse(&format!(
            "{BASE}[[entities]]\nname = \"x\"\nkey = [\"id\"]\nfields.a = {{ owner = \"newest\" }}\n"
        ))
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(":10:") && msg.contains("field `a`"), "{msg}");
        let e = parse(&format!(
            "{BASE}[[entities]]\nname = \"x\"\nkey = [\"id\"]\nfields.a = {{ compare = \"fuzzy\" }}\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("unknown compare"), "{e}");
    }

    #[test]
    fn exporters_default_to_the_entity_table_and_name_bad_keys() {
        let job = parse(&format!(
            "{BASE}[exporters.a]\nkind = \"postgres\"\nurl_env = \"A_URL\"\n[[entities]]\nname = \"users\"\nkey = [\"id\"]\n[[entities]]\nname = \"q\"\nkey = [\"id\"]\nexport.a = {{ query = \"SELECT 1 AS id\" }}\n"
        ))
        .unwrap();
        assert_eq!(
            job.entity("users").unwrap().exports["a"],
            ExportSpec::Table {
                table: "users".into(),
                columns: None
            }
        );
        assert_eq!(
            job.entity("q").unwrap().exports["a"],
            ExportSpec::Query("SELECT 1 AS id".into())
        );
        assert!(!job.entity("q").unwrap().exports.contains_key("b"));

        let e = parse(&format!(
            "{BASE}[exporters.c]\nkind = \"postgres\"\nurl_env = \"X\"\n[[entities]]\nname = \"x\"\nkey = [\"id\"]\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains(":7: exporters.c: `c` is neither"),
            "{e}"
        );
        let e = parse(&format!(
            "{BASE}[exporters.a]\nkind = \"http\"\nbase_url = \"http://h/api\"\n[[entities]]\nname = \"x\"\nkey = [\"id\"]\nexport.a = {{ path = \"x\", columns = [\"id\"] }}\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(":13: entity `x`: column `id` needs a type"),
            "{e}"
        );
        let e = parse(&format!(
            "{BASE}[exporters.a]\nkind = \"mysql\"\nurl_env = \"X\"\nbase_url = \"http://h\"\n[[entities]]\nname = \"x\"\nkey = [\"id\"]\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("`base_url` does not apply to kind = \"mysql\""),
            "{e}"
        );
        let e = parse(&format!(
            "{BASE}[[entities]]\nname = \"x\"\nkey = [\"id\"]\nexport.a = {{ table = \"t\" }}\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(":10: entity `x`: export.a needs an [exporters.a] table"),
            "{e}"
        );
    }

    #[test]
    fn a_rename_onto_a_column_the_job_names_is_an_error() {
        // Regression: such jobs ran with exit 0 and false mismatches.
        for (entity, what) in [
            (
                "key = [\"id\", \"b\"]\nrename = { a = \"b\" }",
                "key column `b`",
            ),
            (
                "key = [\"id\"]\nrename = { a = \"b\" }\nfields.b = { owner = \"replica\" }",
                "field `b`",
            ),
            (
                "key = [\"id\"]\nrename = { a = \"u\" }\nfields.c = { owner = \"newest\", by = \"u\" }",
                "`by` column `u`",
            ),
            (
                "key = [\"id\"]\nrename = { a = \"d\" }\ndeletes = { policy = \"soft\", column = \"d\" }",
                "soft-delete column `d`",
            ),
            (
                "key = [\"id\"]\nrename = { a = \"v\" }\nversion = \"v\"",
                "version column `v`",
            ),
        ] {
            let e = parse(&format!("{BASE}[[entities]]\nname = \"x\"\n{entity}\n")).unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
            assert_eq!(e.exit_code(), crate::ExitCode::Usage);
        }
        // Renamed itself, the column is free to be a target.
        parse(&format!(
            "{BASE}[[entities]]\nname = \"x\"\nkey = [\"id\"]\nrename = {{ a = \"b\", b = \"c\" }}\nfields.b = {{ owner = \"replica\" }}\n"
        ))
        .unwrap();
    }

    #[test]
    fn tolerance_keeps_the_written_decimal() {
        let t = Tolerance::from_f64(0.01).unwrap();
        assert_eq!((t.mantissa, t.scale), (1, 2));
        let t = Tolerance::from_f64(2.5).unwrap();
        assert_eq!((t.mantissa, t.scale), (25, 1));
        assert!(Tolerance::from_f64(-1.0).is_none());
    }
}
