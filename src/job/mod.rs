//! Job files: the raw TOML form ([`raw`], `deny_unknown_fields`) and the validated
//! [`JobConfig`] it becomes ([`validate`]) before any snapshot is read; the exporters'
//! part in [`exporters`].

pub mod exporters;
mod raw;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use exporters::{ExportSpec, ExporterConfig};
use raw::RawJobFile;
use validate::{Cx, MAX_JOB_BYTES, line_of};

pub use validate::{check_name, check_share, parse_entity};

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
