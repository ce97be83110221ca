//! The plan of one entity's diff: the job's entity checked against both snapshot
//! schemas (renames, keys, rules, soft-delete and `by` columns), which columns are keys,
//! compared fields and correction payload, and the common type ([`super::types`]) each
//! pair is compared in. Its queries are rendered by [`super::sql`].

use arrow::datatypes::{DataType, Schema};
use datafusion::logical_expr::ScalarUDF;

use super::compare::FieldComparator;
use super::fingerprint::{self, Fingerprint};
use super::fit::ExactCast;
use super::types::{common_type, finer, holds_all, is_nested, is_numeric, unit_name, value_type};
use crate::error::{Error, Result};
use crate::job::{DeletePolicy, EntityConfig, FieldRule, Owner};
use crate::snapshot::scan_type;

/// Which side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Replica,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Source => Side::Replica,
            Side::Replica => Side::Source,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Replica => "replica",
        }
    }
}

/// A column present on both sides (after renames), with both types.
#[derive(Debug, Clone)]
pub struct MappedColumn {
    pub source: String,
    pub replica: String,
    pub source_type: DataType,
    pub replica_type: DataType,
    /// The type both are compared in; `None` for payload-only columns whose types clash.
    pub common: Option<DataType>,
    pub is_key: bool,
}

impl MappedColumn {
    pub fn name(&self, side: Side) -> &str {
        match side {
            Side::Source => &self.source,
            Side::Replica => &self.replica,
        }
    }
    pub fn data_type(&self, side: Side) -> &DataType {
        match side {
            Side::Source => &self.source_type,
            Side::Replica => &self.replica_type,
        }
    }
    /// The type the queries see this column in on `side`: [`scan_type`] of its type.
    pub fn scan_type(&self, side: Side) -> DataType {
        scan_type(self.data_type(side))
    }
}

/// A compared (non-key) field.
#[derive(Debug, Clone)]
pub struct FieldPlan {
    /// Index into [`EntityPlan::mapped`].
    pub column: usize,
    pub rule: FieldRule,
    pub common: DataType,
    /// For `owner = "newest"`: index into [`EntityPlan::newest`].
    pub newest: Option<usize>,
}

/// How a soft-deleted row is recognised on one side.
#[derive(Debug, Clone, PartialEq)]
pub enum SoftMarker {
    /// Boolean column equal to this value means deleted.
    Bool(bool),
    /// Date or timestamp column: not null means deleted.
    NotNull(DataType),
}

#[derive(Debug, Clone)]
pub struct SoftColumn {
    pub name: String,
    pub marker: SoftMarker,
}

impl SoftColumn {
    /// The column's type in its snapshot.
    pub fn data_type(&self) -> DataType {
        match &self.marker {
            SoftMarker::Bool(_) => DataType::Boolean,
            SoftMarker::NotNull(t) => t.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EntityPlan {
    pub entity: EntityConfig,
    /// Key columns first (in the job's key order), then other mapped columns in source order.
    pub mapped: Vec<MappedColumn>,
    /// Number of leading key columns in `mapped`.
    pub key_len: usize,
    pub fields: Vec<FieldPlan>,
    /// The `by` columns of `newest` fields: (index into mapped, common type).
    pub newest: Vec<(usize, DataType)>,
    pub source_soft: Option<SoftColumn>,
    pub replica_soft: Option<SoftColumn>,
    /// Which key-summary plans may be tried ([`KeyPlan::Auto`] unless a test forces one).
    pub key_plan: KeyPlan,
    /// Columns of one snapshot with no partner in the other, which nothing compares.
    pub one_sided: OneSided,
}

/// The columns of each snapshot that have no partner in the other (after renames), so
/// that no comparison sees them; the replica's soft-delete column is not one of them.
/// The run summary and `recon validate` list them: a column added on one side only is
/// otherwise easy to miss.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OneSided {
    pub source: Vec<String>,
    pub replica: Vec<String>,
}

impl OneSided {
    pub fn is_empty(&self) -> bool {
        self.source.is_empty() && self.replica.is_empty()
    }
}

/// Which plan matches the two sides by key. Every plan gives the same outputs; only
/// time and memory differ. `Auto` tries the merge, then the join, then the aggregation,
/// as each applies; the others start at that plan (a forced merge that cannot run still
/// falls back), so the differential tests can run every case through every plan. Set
/// by the hidden `--key-plan` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyPlan {
    #[default]
    Auto,
    Merge,
    Join,
    Aggregation,
}

impl std::str::FromStr for KeyPlan {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "auto" => KeyPlan::Auto,
            "merge" => KeyPlan::Merge,
            "join" => KeyPlan::Join,
            "aggregation" => KeyPlan::Aggregation,
            other => {
                return Err(format!(
                    "unknown key plan `{other}` (expected auto, merge, join or aggregation)"
                ));
            }
        })
    }
}

impl EntityPlan {
    /// Checks the entity's configuration against both snapshot schemas and plans the diff.
    pub fn try_new(
        entity: &EntityConfig,
        source: &Schema,
        replica: &Schema,
        job_path: &std::path::Path,
    ) -> Result<Self> {
        let err = |message: String| Error::JobSchema {
            path: job_path.to_path_buf(),
            line: entity.line,
            entity: entity.name.clone(),
            message,
        };
        let clash = |message: String| Error::SchemaMismatch {
            path: job_path.to_path_buf(),
            line: entity.line,
            entity: entity.name.clone(),
            message,
        };
        let replica_name = |s: &str| {
            entity
                .rename
                .get(s)
                .cloned()
                .unwrap_or_else(|| s.to_string())
        };
        for (from, to) in &entity.rename {
            if source.field_with_name(from).is_err() {
                return Err(err(format!(
                    "rename names column `{from}`, which is not in the source snapshot ({})",
                    columns(source)
                )));
            }
            if replica.field_with_name(to).is_err() {
                return Err(err(format!(
                    "rename maps `{from}` to `{to}`, which is not in the replica snapshot ({})",
                    columns(replica)
                )));
            }
        }
        // A source column the job does not rename whose name another column is renamed
        // to has no partner: the replica's column of that name is the renamed one's.
        let shadowed = |name: &str| {
            !entity.rename.contains_key(name) && entity.rename.values().any(|t| t == name)
        };
        let lookup = |name: &str, what: &str| -> Result<MappedColumn> {
            let s = source.field_with_name(name).map_err(|_| {
                err(format!(
                    "{what} `{name}` is not in the source snapshot ({})",
                    columns(source)
                ))
            })?;
            let rname = replica_name(name);
            let r = replica.field_with_name(&rname).map_err(|_| {
                err(format!(
                    "{what} `{name}` is not in the replica snapshot as `{rname}` ({})",
                    columns(replica)
                ))
            })?;
            Ok(MappedColumn {
                source: name.to_string(),
                replica: rname,
                source_type: s.data_type().clone(),
                replica_type: r.data_type().clone(),
                common: common_type(s.data_type(), r.data_type()),
                is_key: false,
            })
        };
        let mut mapped = Vec::new();
        for k in &entity.key {
            let mut m = lookup(k, "key column")?;
            if m.common.is_none() {
                return Err(clash(type_clash("key column", &m)));
            }
            m.is_key = true;
            mapped.push(m);
        }
        for name in entity.fields.keys() {
            lookup(name, "field")?;
        }
        for f in source.fields() {
            if entity.key.contains(f.name()) || shadowed(f.name()) {
                continue;
            }
            if replica.field_with_name(&replica_name(f.name())).is_ok() {
                mapped.push(lookup(f.name(), "field")?);
            }
        }
        let index_of = |name: &str| mapped.iter().position(|m| m.source == name);
        // Apply guards updates and deletes on the version column alone: one missing from
        // a snapshot would leave them unguarded.
        if let Some(v) = &entity.version
            && index_of(v).is_none()
        {
            lookup(v, "version column")?;
            return Err(err(format!(
                "version column `{v}` is shadowed by a rename onto `{v}`"
            )));
        }

        let (source_soft, replica_soft) = match &entity.deletes {
            DeletePolicy::Soft {
                column,
                deleted_value,
            } => {
                let on = |schema: &Schema, name: &str, side: Side| -> Result<Option<SoftColumn>> {
                    let Ok(f) = schema.field_with_name(name) else {
                        return Ok(None);
                    };
                    let marker = match value_type(f.data_type()) {
                        DataType::Boolean => SoftMarker::Bool(deleted_value.unwrap_or(true)),
                        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {
                            let t = f.data_type();
                            if deleted_value.is_some() {
                                return Err(err(format!(
                                    "deletes.deleted_value applies to a boolean column, but `{name}` is {t} in the {} snapshot",
                                    side.as_str()
                                )));
                            }
                            SoftMarker::NotNull(t.clone())
                        }
                        t => {
                            return Err(err(format!(
                                "soft-delete column `{name}` must be boolean, date or timestamp, but is {t} in the {} snapshot",
                                side.as_str()
                            )));
                        }
                    };
                    Ok(Some(SoftColumn {
                        name: name.to_string(),
                        marker,
                    }))
                };
                let s = on(source, column, Side::Source)?;
                let r = on(replica, &replica_name(column), Side::Replica)?;
                if r.is_none() {
                    return Err(err(format!(
                        "soft-delete column `{column}` is not in the replica snapshot as `{}` ({})",
                        replica_name(column),
                        columns(replica)
                    )));
                }
                (s, r)
            }
            _ => (None, None),
        };
        // The columns of `schema` that no mapped column (named by `name`) nor the
        // soft-delete column is.
        let unpartnered =
            |schema: &Schema, name: fn(&MappedColumn) -> &String, soft: &Option<SoftColumn>| {
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name())
                    .filter(|n| !mapped.iter().any(|m| name(m) == *n))
                    .filter(|n| soft.as_ref().is_none_or(|s| &s.name != *n))
                    .cloned()
                    .collect()
            };
        let one_sided = OneSided {
            source: unpartnered(source, |m| &m.source, &source_soft),
            replica: unpartnered(replica, |m| &m.replica, &replica_soft),
        };
        let soft_source_name = match &entity.deletes {
            DeletePolicy::Soft { column, .. } => Some(column.as_str()),
            _ => None,
        };

        let mut fields = Vec::new();
        let mut newest = Vec::new();
        for (i, m) in mapped.iter().enumerate() {
            if m.is_key || Some(m.source.as_str()) == soft_source_name {
                continue;
            }
            let rule = entity.fields.get(&m.source).cloned().unwrap_or_default();
            if rule.ignore {
                continue;
            }
            let Some(common) = m.common.clone() else {
                return Err(clash(type_clash("field", m)));
            };
            check_rule(&rule, &common).map_err(|e| err(format!("field `{}`: {e}", m.source)))?;
            let newest_index = match &rule.owner {
                Owner::Newest { by } => {
                    let j = index_of(by).ok_or_else(|| {
                        err(format!(
                            "field `{}`: `by` column `{by}` is not in both snapshots",
                            m.source
                        ))
                    })?;
                    let t = mapped[j]
                        .common
                        .clone()
                        .ok_or_else(|| clash(type_clash("`by` column", &mapped[j])))?;
                    newest.push((j, t));
                    Some(newest.len() - 1)
                }
                _ => None,
            };
            fields.push(FieldPlan {
                column: i,
                rule,
                common,
                newest: newest_index,
            });
        }
        Ok(EntityPlan {
            entity: entity.clone(),
            key_len: entity.key.len(),
            mapped,
            fields,
            newest,
            source_soft,
            replica_soft,
            key_plan: KeyPlan::Auto,
            one_sided,
        })
    }

    pub fn keys(&self) -> &[MappedColumn] {
        &self.mapped[..self.key_len]
    }

    pub fn field_column(&self, f: &FieldPlan) -> &MappedColumn {
        &self.mapped[f.column]
    }

    /// The mapped columns whose two sides count time in different units (timestamps or
    /// durations), each described for an error message. They are compared in the finer
    /// unit, which holds a shorter span (nanoseconds: 1677-09-21 to 2262-04-11), so a
    /// value of the coarser side outside it cannot be compared: recon stops with exit 4
    /// rather than compare it wrongly.
    pub fn widened_units(&self) -> Vec<String> {
        let unit = |t: &DataType| match value_type(t) {
            DataType::Timestamp(u, _) | DataType::Duration(u) => Some(*u),
            _ => None,
        };
        self.mapped
            .iter()
            .filter_map(|m| match (unit(&m.source_type), unit(&m.replica_type)) {
                (Some(a), Some(b)) if a != b => Some(format!(
                    "`{}` is in {} in the source and in {} in the replica, compared in {}",
                    m.source,
                    unit_name(a),
                    unit_name(b),
                    unit_name(finer(a, b))
                )),
                _ => None,
            })
            .collect()
    }

    /// The replica's soft-delete column when it is not one of the mapped columns. The
    /// queries carry its raw value after the replica's mapped columns, as column
    /// `mapped.len()` (`v{n}`, `rv{n}`, `rcur{n}`), so that a correction's `expected`
    /// holds the value the snapshot saw.
    pub fn extra_soft(&self) -> Option<&SoftColumn> {
        self.replica_soft
            .as_ref()
            .filter(|s| !self.mapped.iter().any(|m| m.replica == s.name))
    }

    /// The replica's columns the queries carry, in order: the mapped columns, then
    /// [`Self::extra_soft`]. (name, declared type.)
    pub(super) fn replica_carried(&self) -> Vec<(&str, DataType)> {
        let mut out: Vec<(&str, DataType)> = self
            .mapped
            .iter()
            .map(|m| (m.replica.as_str(), m.replica_type.clone()))
            .collect();
        if let Some(s) = self.extra_soft() {
            out.push((s.name.as_str(), s.data_type()));
        }
        out
    }

    /// One comparator function per compared field, named `recon_cmp_{i}`.
    pub fn comparators(&self) -> Vec<ScalarUDF> {
        self.fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                FieldComparator::new(
                    format!("recon_cmp_{i}"),
                    f.rule.compare.clone(),
                    f.common.clone(),
                )
                .into_udf()
            })
            .collect()
    }

    /// The fingerprint function over the compared fields, for [`Self::keys_sql`].
    pub fn fingerprint(&self) -> ScalarUDF {
        Fingerprint::new(
            self.fields
                .iter()
                .map(|f| (f.rule.compare.clone(), self.fingerprint_type(f)))
                .collect(),
        )
        .into_udf()
    }

    /// Every function the entity's queries call: the comparators, the fingerprint and
    /// the exact casts of correction values.
    pub fn functions(&self) -> Vec<ScalarUDF> {
        let mut udfs = self.comparators();
        udfs.push(self.fingerprint());
        udfs.push(fingerprint::normal_float_key());
        udfs.push(super::fit::decimal_to_float());
        for (j, m) in self.mapped.iter().enumerate() {
            for to in [Side::Source, Side::Replica] {
                let from = to.other();
                if self.needs_fit(to, j) {
                    udfs.push(
                        ExactCast::new(
                            fit_name(to, j),
                            m.data_type(from).clone(),
                            m.data_type(to).clone(),
                        )
                        .into_udf(),
                    );
                }
            }
        }
        udfs
    }

    /// Whether mapped column `j`'s values from the other side need [`ExactCast`] to be
    /// set on side `to`: when `to`'s type may not hold them all.
    pub fn needs_fit(&self, to: Side, j: usize) -> bool {
        let m = &self.mapped[j];
        !holds_all(m.data_type(to.other()), m.data_type(to))
    }

    /// The type a compared field is fingerprinted in: its common type, except that an
    /// integer column of one type on both sides is hashed as it is read. Widening it to
    /// the common type (`Int32` to `Int64`, `UInt64` to a decimal) would cost a cast of
    /// every row of both sides for the same verdict: both sides hash the same type, and
    /// integers need no normal form.
    pub(super) fn fingerprint_type(&self, f: &FieldPlan) -> DataType {
        let m = self.field_column(f);
        let (s, r) = (m.scan_type(Side::Source), m.scan_type(Side::Replica));
        if s == r && s.is_integer() {
            s
        } else {
            scan_type(&f.common)
        }
    }
}

fn columns(schema: &Schema) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    format!("columns: {}", names.join(", "))
}

fn type_clash(what: &str, m: &MappedColumn) -> String {
    let hint = if is_nested(&m.source_type) || is_nested(&m.replica_type) {
        " (struct, list and map columns are not compared: give the field `ignore = true`)"
    } else {
        ""
    };
    format!(
        "{what} `{}` cannot be compared: {} in the source snapshot, {} in the replica snapshot (as `{}`){hint}",
        m.source, m.source_type, m.replica_type, m.replica
    )
}

fn check_rule(rule: &FieldRule, t: &DataType) -> std::result::Result<(), String> {
    let c = &rule.compare;
    if c.is_textual() && !matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        return Err(format!(
            "case_insensitive, trim and null_equals_empty apply to text, not {t}"
        ));
    }
    if c.is_numeric() && !is_numeric(t) {
        return Err(format!("abs_tol and rel_tol apply to numbers, not {t}"));
    }
    if c.precision.is_some() && !matches!(t, DataType::Timestamp(..)) {
        return Err(format!("precision applies to timestamps, not {t}"));
    }
    Ok(())
}

/// The name of the exact cast of mapped column `j`'s values to side `to`.
pub(super) fn fit_name(to: Side, j: usize) -> String {
    match to {
        Side::Replica => format!("recon_fit_r{j}"),
        Side::Source => format!("recon_fit_s{j}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_are_checked_against_both_snapshots() {
        use DataType::*;
        use arrow::datatypes::Field;
        let plan = |entity: &str, source: &[&str], replica: &[&str]| {
            let entity = crate::job::parse_entity(entity).unwrap();
            let schema = |names: &[&str]| {
                Schema::new(
                    names
                        .iter()
                        .map(|n| Field::new(*n, Int64, true))
                        .collect::<Vec<_>>(),
                )
            };
            EntityPlan::try_new(
                &entity,
                &schema(source),
                &schema(replica),
                std::path::Path::new("t"),
            )
        };
        // Regression: a rename to a column the replica lacks was accepted silently.
        let e = plan(
            "name = \"t\"\nkey = [\"id\"]\nrename = { amount = \"amt\" }",
            &["id", "amount"],
            &["id", "amount"],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("rename maps `amount` to `amt`, which is not in the replica snapshot"),
            "{e}"
        );
        // Regression: a source column named like a rename's target was compared with
        // the replica's renamed column too, and the run aborted.
        let p = plan(
            "name = \"t\"\nkey = [\"id\"]\nrename = { amount = \"amt\" }",
            &["id", "amount", "amt"],
            &["id", "amt"],
        )
        .unwrap();
        let compared: Vec<(&str, &str)> = p
            .fields
            .iter()
            .map(|f| {
                let m = p.field_column(f);
                (m.source.as_str(), m.replica.as_str())
            })
            .collect();
        assert_eq!(compared, [("amount", "amt")]);
        // The shadowed source column has no partner: it is listed, not compared.
        assert_eq!(p.one_sided.source, ["amt"]);
        assert!(p.one_sided.replica.is_empty());
    }

    #[test]
    fn columns_on_one_side_only_are_listed() {
        use arrow::datatypes::Field;
        let schema = |names: &[&str]| {
            Schema::new(
                names
                    .iter()
                    .map(|n| Field::new(*n, DataType::Int64, true))
                    .collect::<Vec<_>>(),
            )
        };
        let entity = crate::job::parse_entity(
            "name = \"t\"\nkey = [\"id\"]\nrename = { amount = \"amt\" }\nfields.note = { ignore = true }",
        )
        .unwrap();
        let p = EntityPlan::try_new(
            &entity,
            &schema(&["id", "amount", "note", "legacy"]),
            &schema(&["id", "amt", "note", "loaded_at", "etl_batch"]),
            std::path::Path::new("t"),
        )
        .unwrap();
        // `note` is on both sides (ignored by the job, not one-sided); renames pair.
        assert_eq!(p.one_sided.source, ["legacy"]);
        assert_eq!(p.one_sided.replica, ["loaded_at", "etl_batch"]);
    }
}
