//! Validation: the raw job ([`super::raw`]) checked key by key and turned into the
//! validated [`JobConfig`], every error naming the file and line. Linear in the size of
//! the job (a newline index gives each span its line).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use toml::Spanned;

use super::exporters::{parse_entity_export, parse_exporter};
use super::raw::*;
use super::*;
use crate::error::{Error, Result};

/// The largest job file recon reads.
pub(super) const MAX_JOB_BYTES: u64 = 16 << 20;

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

pub(super) struct Cx<'a> {
    path: &'a Path,
    /// Offsets of the text's newlines, so that a line is found in log time: a job of
    /// 40,000 entities is validated in linear time, not quadratic.
    newlines: Vec<usize>,
}

impl<'a> Cx<'a> {
    pub(super) fn new(path: &'a Path, text: &'a str) -> Self {
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

    pub(super) fn validate(&self, raw: RawJobFile) -> Result<JobConfig> {
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

pub(super) fn parse_field(raw: RawField) -> std::result::Result<FieldRule, String> {
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
