//! The plan of one entity's diff: which columns are keys, compared fields and correction
//! payload, in which common type each pair is compared, and the SQL that does it,
//! rendered from `queries/*.sql` with quoted identifiers only.

use arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::logical_expr::ScalarUDF;

use super::compare::FieldComparator;
use super::fingerprint::{self, Fingerprint};
use super::fit::ExactCast;
use crate::error::{Error, Result};
use crate::job::{DeletePolicy, EntityConfig, FieldRule, Owner};
use crate::snapshot::scan_type;
use crate::template::fill;

const NULL_KEYS_SQL: &str = include_str!("../../queries/null_keys.sql");
const DUPLICATE_KEYS_SQL: &str = include_str!("../../queries/duplicate_keys.sql");
const KEYS_SQL: &str = include_str!("../../queries/keys.sql");
const KEY_PAIRS_SQL: &str = include_str!("../../queries/key_pairs.sql");
const KEY_SIDE_SQL: &str = include_str!("../../queries/key_side.sql");
const KEY_PAIRS_SUMMARY_SQL: &str = include_str!("../../queries/key_pairs_summary.sql");
const PAIRS_PAYLOAD_SQL: &str = include_str!("../../queries/pairs_payload.sql");
const DIFF_SQL: &str = include_str!("../../queries/diff.sql");
const PAIRS_DIFF_SQL: &str = include_str!("../../queries/pairs_diff.sql");
const PAYLOAD_SQL: &str = include_str!("../../queries/payload.sql");

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

pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn cast_to(expr: &str, from: &DataType, to: &DataType) -> String {
    match (value_type(from), to) {
        _ if from == to => expr.to_string(),
        // Arrow divides a decimal's f64 by a power of ten, rounding twice.
        (DataType::Decimal128(..) | DataType::Decimal256(..), DataType::Float64) => {
            format!("{}({expr})", super::fit::DECIMAL_TO_FLOAT)
        }
        _ => format!("arrow_cast({expr}, '{to}')"),
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
    fn replica_carried(&self) -> Vec<(&str, DataType)> {
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

    fn key_lists(&self, side: Side, alias: &str) -> (String, String, String) {
        let names: Vec<String> = self.keys().iter().map(|k| quote(k.name(side))).collect();
        let with = |op: &str, join: &str| {
            names
                .iter()
                .map(|n| format!("{alias}{n} {op}"))
                .collect::<Vec<_>>()
                .join(join)
        };
        (
            names.join(", "),
            with("IS NULL", " OR "),
            with("IS NOT NULL", " AND "),
        )
    }

    /// Keys of `table` (one side's raw snapshot) with a NULL part, with their row counts.
    /// The keys are in their common types, so that a key renders alike on both sides
    /// and in every kind of row.
    pub fn null_keys_sql(&self, side: Side, table: &str) -> String {
        let (_, is_null, _) = self.key_lists(side, "t.");
        let keys = self.key_projection(side);
        let groups: Vec<&str> = keys
            .iter()
            .map(|k| k.rsplit_once(" AS ").map_or(k.as_str(), |(e, _)| e))
            .collect();
        fill(
            NULL_KEYS_SQL,
            &[
                ("keys", &keys.join(", ")),
                ("groups", &groups.join(", ")),
                ("order", &self.key_names("")),
                ("key_is_null", &is_null),
                ("table", &quote(table)),
            ],
        )
    }

    /// Complete keys of one side that occur more than once, with their row counts, in
    /// the common key types, read from the key summary table `summary`.
    pub fn duplicate_keys_sql(&self, side: Side, summary: &str) -> String {
        let keys = self.key_names("");
        let rows = match side {
            Side::Source => "\"__source_rows\"",
            Side::Replica => "\"__replica_rows\"",
        };
        fill(
            DUPLICATE_KEYS_SQL,
            &[
                ("keys", &keys),
                ("order", &keys),
                ("rows", rows),
                ("summary", &quote(summary)),
            ],
        )
    }

    /// `t`'s key columns cast to the common key types as scanned ([`scan_type`]), as
    /// `k0`, `k1`, …
    fn key_projection(&self, side: Side) -> Vec<String> {
        self.keys()
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let common = k.common.as_ref().expect("keys have a common type");
                let col = format!("t.{}", quote(k.name(side)));
                let key = cast_to(&col, &k.scan_type(side), &scan_type(common));
                let key = if common.is_floating() {
                    format!("{}({key})", fingerprint::NORMAL_FLOAT_KEY)
                } else {
                    key
                };
                format!("{key} AS \"k{i}\"")
            })
            .collect()
    }

    /// The generated key column names, `"k0", "k1", …`, with an optional alias prefix.
    fn key_names(&self, alias: &str) -> String {
        (0..self.key_len)
            .map(|i| format!("{alias}\"k{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
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

    /// The value mapped column `j` is set to on side `to`, from `expr`, the other side's
    /// raw value: cast when `to`'s type holds every value, else an exact cast that is
    /// NULL where it does not hold this one.
    fn set_value(&self, to: Side, j: usize, expr: String) -> String {
        let m = &self.mapped[j];
        if self.needs_fit(to, j) {
            format!("{}({expr})", fit_name(to, j))
        } else {
            cast_to(&expr, m.data_type(to.other()), m.data_type(to))
        }
    }

    /// The type a compared field is fingerprinted in: its common type, except that an
    /// integer column of one type on both sides is hashed as it is read. Widening it to
    /// the common type (`Int32` to `Int64`, `UInt64` to a decimal) would cost a cast of
    /// every row of both sides for the same verdict: both sides hash the same type, and
    /// integers need no normal form.
    fn fingerprint_type(&self, f: &FieldPlan) -> DataType {
        let m = self.field_column(f);
        let (s, r) = (m.scan_type(Side::Source), m.scan_type(Side::Replica));
        if s == r && s.is_integer() {
            s
        } else {
            scan_type(&f.common)
        }
    }

    /// The fingerprint of `t`'s compared fields when `t` is live on `side`, else NULL.
    /// Without a soft-delete column every row is live, and the fingerprint goes without
    /// the `CASE`, which DataFusion would evaluate by filtering each batch.
    fn live_fingerprint(&self, side: Side) -> String {
        let (live, fingerprint) = (self.live(side), self.fingerprint_expr(side));
        if live == "TRUE" {
            fingerprint
        } else {
            format!("CASE WHEN {live} THEN {fingerprint} END")
        }
    }

    /// `t`'s compared fields in their common types, fingerprinted.
    fn fingerprint_expr(&self, side: Side) -> String {
        if self.fields.is_empty() {
            return "arrow_cast(0, 'UInt64')".to_string();
        }
        let args = self
            .fields
            .iter()
            .map(|f| {
                let m = self.field_column(f);
                let col = format!("t.{}", quote(m.name(side)));
                cast_to(&col, &m.scan_type(side), &self.fingerprint_type(f))
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!("{}({args})", fingerprint::NAME)
    }

    /// The key summary over the raw snapshot tables `source` and `replica`
    /// (queries/keys.sql): `k{i}`, `__source_rows`, `__source_live`, `__replica_rows`,
    /// `__replica_live`, `__xor`, for the keys that need a look only.
    pub fn keys_sql(&self, source: &str, replica: &str) -> String {
        self.summary_sql(KEYS_SQL, source, replica)
    }

    /// The pairs of source and replica rows that need a look, by a join of the two sides
    /// on the key (queries/key_pairs.sql), each carrying the replica row's raw mapped
    /// columns; exact when no key found on both sides is repeated.
    pub fn key_pairs_sql(&self, source: &str, replica: &str) -> String {
        self.summary_sql(KEY_PAIRS_SQL, source, replica)
    }

    /// The key summary (the output of [`Self::keys_sql`]) from the table `pairs` of
    /// [`Self::key_pairs_sql`] (queries/key_pairs_summary.sql).
    pub fn key_pairs_summary_sql(&self, pairs: &str) -> String {
        fill(
            KEY_PAIRS_SUMMARY_SQL,
            &[("keys", &self.key_names("")), ("pairs", &quote(pairs))],
        )
    }

    fn summary_sql(&self, template: &str, source: &str, replica: &str) -> String {
        let (_, _, source_complete) = self.key_lists(Side::Source, "t.");
        let (_, _, replica_complete) = self.key_lists(Side::Replica, "t.");
        let paired_keys = (0..self.key_len)
            .map(|i| format!("coalesce(s.\"k{i}\", r.\"k{i}\") AS \"k{i}\""))
            .collect::<Vec<_>>()
            .join(", ");
        // The replica's raw mapped columns, as the pairs carry them.
        let carried = self.replica_carried();
        let replica_values = carried
            .iter()
            .enumerate()
            .map(|(j, (name, _))| format!("t.{} AS \"v{j}\"", quote(name)))
            .collect::<Vec<_>>()
            .join(", ");
        let carried_values = (0..carried.len())
            .map(|j| format!("r.\"v{j}\" AS \"v{j}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let pairs_on = (0..self.key_len)
            .map(|i| format!("s.\"k{i}\" = r.\"k{i}\""))
            .collect::<Vec<_>>()
            .join(" AND ");
        fill(
            template,
            &[
                ("source_keys", &self.key_projection(Side::Source).join(", ")),
                (
                    "replica_keys",
                    &self.key_projection(Side::Replica).join(", "),
                ),
                ("source_live", &self.live(Side::Source)),
                ("replica_live", &self.live(Side::Replica)),
                (
                    "source_live_fingerprint",
                    &self.live_fingerprint(Side::Source),
                ),
                (
                    "replica_live_fingerprint",
                    &self.live_fingerprint(Side::Replica),
                ),
                ("source", &quote(source)),
                ("replica", &quote(replica)),
                ("source_key_is_complete", &source_complete),
                ("replica_key_is_complete", &replica_complete),
                ("keys", &self.key_names("")),
                ("paired_keys", &paired_keys),
                ("replica_values", &replica_values),
                ("carried_values", &carried_values),
                ("pairs_on", &pairs_on),
            ],
        )
    }

    /// One side of the key merge ([`super::merge::MergePairsExec`], queries/key_side.sql):
    /// `k{i}`, `__h` and the side's raw mapped columns, as `sv{j}` (source) or `v{j}`
    /// (replica, the names the pairs of [`Self::key_pairs_sql`] give them). With
    /// `keys_only`, the keys and a constant `__h`, to check the order of the keys.
    pub fn key_side_sql(&self, side: Side, table: &str, keys_only: bool) -> String {
        let (_, _, complete) = self.key_lists(side, "t.");
        let values: String = if keys_only {
            String::new()
        } else {
            let names: Vec<&str> = match side {
                Side::Source => self.mapped.iter().map(|m| m.source.as_str()).collect(),
                Side::Replica => self.replica_carried().into_iter().map(|(n, _)| n).collect(),
            };
            names
                .iter()
                .enumerate()
                .map(|(j, name)| {
                    format!(
                        ",\n       t.{} AS \"{}{j}\"",
                        quote(name),
                        carried_prefix(side)
                    )
                })
                .collect()
        };
        let fingerprint = if keys_only {
            "arrow_cast(0, 'UInt64')".to_string()
        } else {
            self.live_fingerprint(side)
        };
        fill(
            KEY_SIDE_SQL,
            &[
                ("keys", &self.key_projection(side).join(", ")),
                ("live_fingerprint", &fingerprint),
                ("values", &values),
                ("table", &quote(table)),
                ("key_is_complete", &complete),
            ],
        )
    }

    /// The replica's live rows from the table `pairs` of [`Self::key_pairs_sql`], with the
    /// columns of [`Self::payload_sql`] (queries/pairs_payload.sql).
    fn pairs_payload_sql(&self, pairs: &str) -> String {
        let values = self
            .replica_carried()
            .iter()
            .enumerate()
            .map(|(j, (_, t))| {
                let v = format!("\"v{j}\"");
                let value = cast_to(&v, &scan_type(t), t);
                format!("{value} AS {v}")
            })
            .collect::<Vec<_>>()
            .join(", ");
        fill(
            PAIRS_PAYLOAD_SQL,
            &[
                ("keys", &self.key_names("")),
                ("values", &values),
                ("pairs", &quote(pairs)),
            ],
        )
    }

    /// `t` is live on `side`: not soft-deleted (TRUE when the side has no such column).
    fn live(&self, side: Side) -> String {
        match match side {
            Side::Source => &self.source_soft,
            Side::Replica => &self.replica_soft,
        } {
            None => "TRUE".to_string(),
            Some(SoftColumn {
                name,
                marker: SoftMarker::Bool(v),
            }) => format!(
                "t.{} IS DISTINCT FROM {}",
                quote(name),
                if *v { "TRUE" } else { "FALSE" }
            ),
            Some(SoftColumn { name, .. }) => format!("t.{} IS NULL", quote(name)),
        }
    }

    /// One side's live rows: the key in the common types (as scanned) and every mapped
    /// column in its declared type, as `v{j}`. The cast copies string views out of the
    /// Parquet pages they point into, so the diff holds only the few rows it reads.
    fn payload_sql(&self, side: Side, table: &str) -> String {
        let mut projection = self.key_projection(side);
        let columns: Vec<(&str, DataType)> = match side {
            Side::Source => self
                .mapped
                .iter()
                .map(|m| (m.source.as_str(), m.source_type.clone()))
                .collect(),
            Side::Replica => self.replica_carried(),
        };
        for (j, (name, t)) in columns.iter().enumerate() {
            let col = format!("t.{}", quote(name));
            let value = cast_to(&col, &scan_type(t), t);
            projection.push(format!("{value} AS \"v{j}\""));
        }
        let (_, _, complete) = self.key_lists(side, "t.");
        fill(
            PAYLOAD_SQL,
            &[
                ("projection", &projection.join(", ")),
                ("table", &quote(table)),
                ("key_is_complete", &complete),
                ("live", &self.live(side)),
            ],
        )
    }

    /// The diff query's columns that it leaves out because an earlier column has the same
    /// values: (left-out name, name of the column that has them). The diff's rows are
    /// sorted, and each column sorted costs a gather, so a value (`sc{i}`, `rset{j}` and
    /// `scur{j}` are often one expression) is carried once.
    pub fn diff_aliases(&self) -> Vec<(String, String)> {
        self.diff_columns().aliases
    }

    /// The columns the diff query's rows carry, named once per distinct expression
    /// (see [`Self::diff_sql`]).
    fn diff_columns(&self) -> DiffColumns {
        self.diff_columns_from("sj", "rj")
    }

    /// [`Self::diff_columns`] over the raw values `{s}."sv{j}"` and `{r}."rv{j}"`, and
    /// the keys `{s}."k{i}"`.
    fn diff_columns_from(&self, s: &str, r: &str) -> DiffColumns {
        let raw = |side: Side, j: usize| match side {
            Side::Source => format!("{s}.\"sv{j}\""),
            Side::Replica => format!("{r}.\"rv{j}\""),
        };
        let value = |side: Side, j: usize, to: &DataType| {
            cast_to(&raw(side, j), self.mapped[j].data_type(side), to)
        };
        let mut out = DiffColumns::default();
        for i in 0..self.key_len {
            out.push(format!("{s}.\"k{i}\""), format!("k{i}"));
        }
        for (i, f) in self.fields.iter().enumerate() {
            let s = value(Side::Source, f.column, &f.common);
            let r = value(Side::Replica, f.column, &f.common);
            out.push(format!("recon_cmp_{i}({s}, {r})"), format!("reason{i}"));
            out.push(s, format!("sc{i}"));
            out.push(r, format!("rc{i}"));
        }
        for (i, f) in self.fields.iter().enumerate() {
            if let Some(n) = f.newest {
                let (j, common) = &self.newest[n];
                let (r, s) = (
                    value(Side::Replica, *j, common),
                    value(Side::Source, *j, common),
                );
                out.push(format!("{r} > {s}"), format!("rnewer{i}"));
            }
        }
        for (j, m) in self.mapped.iter().enumerate() {
            let rset = self.set_value(Side::Replica, j, raw(Side::Source, j));
            let sset = self.set_value(Side::Source, j, raw(Side::Replica, j));
            let (rcur, scur) = (raw(Side::Replica, j), raw(Side::Source, j));
            if m.is_key {
                // Keys to set come from whichever side has the row.
                out.push(format!("coalesce({rset}, {rcur})"), format!("rset{j}"));
                out.push(format!("coalesce({sset}, {scur})"), format!("sset{j}"));
            } else {
                out.push(rset, format!("rset{j}"));
                out.push(sset, format!("sset{j}"));
            }
            out.push(rcur, format!("rcur{j}"));
            out.push(scur, format!("scur{j}"));
        }
        if self.extra_soft().is_some() {
            let j = self.mapped.len();
            out.push(raw(Side::Replica, j), format!("rcur{j}"));
        }
        out
    }

    /// The diff query over the table `pairs` of the key merge, whose pairs carry both
    /// sides' raw columns (queries/pairs_diff.sql): the columns of [`Self::diff_sql`],
    /// in key order, without a join, since each pair holds both sides' rows.
    pub fn pairs_diff_sql(&self, pairs: &str) -> String {
        let columns = self.diff_columns_from("p", "p").columns;
        let values = |side: Side| {
            let (live, prefix, alias) = match side {
                Side::Source => ("\"__sl\"", "sv", "sv"),
                Side::Replica => ("\"__rl\"", "v", "rv"),
            };
            let columns: Vec<DataType> = match side {
                Side::Source => self.mapped.iter().map(|m| m.source_type.clone()).collect(),
                Side::Replica => self.replica_carried().into_iter().map(|(_, t)| t).collect(),
            };
            columns
                .iter()
                .enumerate()
                .map(|(j, t)| {
                    let v = format!("\"{prefix}{j}\"");
                    let value = cast_to(&v, &scan_type(t), t);
                    format!("CASE WHEN {live} = 1 THEN {value} END AS \"{alias}{j}\"")
                })
                .collect::<Vec<_>>()
                .join(",\n         ")
        };
        fill(
            PAIRS_DIFF_SQL,
            &[
                ("keys", &self.key_names("")),
                ("pairs", &quote(pairs)),
                ("source_values", &values(Side::Source)),
                ("replica_values", &values(Side::Replica)),
                ("columns", &columns.join(",\n         ")),
                ("any_reason", &self.any_reason()),
                ("order_by", &self.key_names("j.")),
            ],
        )
    }

    /// Some compared field of the diff's row `j` differs.
    fn any_reason(&self) -> String {
        if self.fields.is_empty() {
            "FALSE".to_string()
        } else {
            (0..self.fields.len())
                .map(|i| format!("j.\"reason{i}\" IS NOT NULL"))
                .collect::<Vec<_>>()
                .join(" OR ")
        }
    }

    /// The diff query over the key summary table `summary` and the raw snapshot tables
    /// `source` and `replica`. Its columns: `__class`, `k{i}` (keys, common types),
    /// `reason{i}`, `sc{i}`/`rc{i}` (both values, common type), `rnewer{i}` (newest
    /// fields: replica is later), and per mapped column `j`: `rset{j}`/`rcur{j}`
    /// (replica types: value to set, current value) and `sset{j}`/`scur{j}` (source
    /// types). A column that would repeat an earlier one's values is left out; see
    /// [`Self::diff_aliases`].
    ///
    /// `carried` is the table of [`Self::key_pairs_sql`] when the key summary was made
    /// from it: the replica's rows are then read from it, not from the snapshot. (After
    /// the key merge, [`Self::pairs_diff_sql`] reads both sides' rows from its pairs.)
    pub fn diff_sql(
        &self,
        summary: &str,
        source: &str,
        replica: &str,
        carried: Option<&str>,
    ) -> String {
        let columns = self.diff_columns().columns;
        let payload_on = |alias: &str| {
            (0..self.key_len)
                .map(|i| format!("{alias}.\"k{i}\" = d.\"k{i}\""))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let side_values = |alias: &str, prefix: &str, n: usize| {
            (0..n)
                .map(|j| format!("{alias}.\"v{j}\" AS \"{prefix}{j}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let sides_on = (0..self.key_len)
            .map(|i| format!("sj.\"k{i}\" = rj.\"k{i}\""))
            .collect::<Vec<_>>()
            .join(" AND ");
        let any_reason = self.any_reason();
        fill(
            DIFF_SQL,
            &[
                ("keys", &self.key_names("")),
                ("summary", &quote(summary)),
                ("source_payload", &self.payload_sql(Side::Source, source)),
                (
                    "replica_payload",
                    &match carried {
                        Some(pairs) => self.pairs_payload_sql(pairs),
                        None => self.payload_sql(Side::Replica, replica),
                    },
                ),
                ("columns", &columns.join(",\n         ")),
                ("source_values", &side_values("sp", "sv", self.mapped.len())),
                (
                    "replica_values",
                    &side_values("rp", "rv", self.replica_carried().len()),
                ),
                ("d_keys", &self.key_names("d.")),
                ("sides_on", &sides_on),
                ("source_payload_on", &payload_on("sp")),
                ("replica_payload_on", &payload_on("rp")),
                ("any_reason", &any_reason),
                ("order_by", &self.key_names("j.")),
            ],
        )
    }
}

/// The name of the exact cast of mapped column `j`'s values to side `to`.
fn fit_name(to: Side, j: usize) -> String {
    match to {
        Side::Replica => format!("recon_fit_r{j}"),
        Side::Source => format!("recon_fit_s{j}"),
    }
}

/// Whether `to` holds every value of `from` exactly, so a plain cast never rounds,
/// overflows or fails: the same type, a wider integer, another string or variable
/// binary layout, a wider float, a decimal with at least as many integer and fraction
/// digits, a date as Date64.
pub fn holds_all(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let int_bits = |t: &DataType| -> Option<(bool, u32)> {
        Some(match t {
            Int8 => (true, 8),
            Int16 => (true, 16),
            Int32 => (true, 32),
            Int64 => (true, 64),
            UInt8 => (false, 8),
            UInt16 => (false, 16),
            UInt32 => (false, 32),
            UInt64 => (false, 64),
            _ => return None,
        })
    };
    let digits = |t: &DataType| -> Option<(i16, i16)> {
        match t {
            Decimal128(p, s) | Decimal256(p, s) => Some((*p as i16 - *s as i16, *s as i16)),
            t => int_bits(t).map(|(signed, bits)| {
                let digits = match (signed, bits) {
                    (_, 8) => 3,
                    (_, 16) => 5,
                    (_, 32) => 10,
                    (true, _) => 19,
                    (false, _) => 20,
                };
                (digits, 0)
            }),
        }
    };
    if from == to {
        return true;
    }
    if let DataType::Dictionary(_, values) = from {
        // A dictionary's values cast out of it; into a dictionary may overflow its keys.
        return !matches!(to, DataType::Dictionary(..)) && holds_all(values, to);
    }
    match (from, to) {
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (
            Binary | LargeBinary | BinaryView | FixedSizeBinary(_),
            Binary | LargeBinary | BinaryView,
        ) => true,
        (Float16, Float32 | Float64) | (Float32, Float64) => true,
        (Date32, Date64) => true,
        (Decimal128(..) | Decimal256(..), Decimal128(..) | Decimal256(..)) => {
            let ((fi, fs), (ti, ts)) =
                (digits(from).expect("decimal"), digits(to).expect("decimal"));
            ti >= fi && ts >= fs
        }
        (f, t) if int_bits(f).is_some() && int_bits(t).is_some() => {
            let ((fs, fb), (ts, tb)) = (int_bits(f).expect("int"), int_bits(t).expect("int"));
            (fs == ts && tb >= fb) || (!fs && ts && tb > fb)
        }
        (f, Decimal128(..) | Decimal256(..)) if int_bits(f).is_some() => {
            let ((fi, _), (ti, _)) = (digits(f).expect("int"), digits(to).expect("decimal"));
            ti >= fi
        }
        _ => false,
    }
}

/// The prefix of the raw mapped columns a side's pairs carry: `sv{j}` for the source,
/// `v{j}` for the replica.
fn carried_prefix(side: Side) -> &'static str {
    match side {
        Side::Source => "sv",
        Side::Replica => "v",
    }
}

/// The select list of the diff query, each distinct expression once.
#[derive(Default)]
struct DiffColumns {
    /// `expr AS "name"`, in order.
    columns: Vec<String>,
    /// (name, name of the earlier column with the same expression).
    aliases: Vec<(String, String)>,
    /// Expression → its column's name.
    seen: std::collections::HashMap<String, String>,
}

impl DiffColumns {
    fn push(&mut self, expr: String, name: String) {
        match self.seen.get(&expr) {
            Some(first) => self.aliases.push((name, first.clone())),
            None => {
                self.columns.push(format!("{expr} AS \"{name}\""));
                self.seen.insert(expr, name);
            }
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

pub fn is_numeric(t: &DataType) -> bool {
    t.is_integer()
        || t.is_floating()
        || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))
}

/// The type two columns are compared in, or `None` if they cannot be compared by value.
/// It always holds every value of both sides: nothing is cast down. Dictionary-encoded
/// columns compare as their values. Integers of any width compare as Int64 (UInt64, and
/// UInt64 against any signed type, as Decimal(20,0)); decimals at the larger scale, as
/// Decimal256 when 38 digits do not hold both; integers against decimals as decimals;
/// any float makes Float64; string layouts unify, as do binary layouts (fixed-size
/// binary, such as UUIDs, included); dates compare as Date64 when either side is one;
/// times, durations and timestamps at the finer unit, timestamps in UTC when either side
/// has a zone (naive values are taken as UTC). Intervals compare only with the same
/// interval type. Nested types (struct, list, map) are not compared. The key summary
/// sees the common type as its [`scan_type`].
pub fn common_type(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    let (a, b) = (value_type(a), value_type(b));
    if is_nested(a) || is_nested(b) {
        return None;
    }
    // (integer digits, scale) of an exact number.
    let digits = |t: &DataType| -> Option<(i16, i16)> {
        match t {
            UInt64 => Some((20, 0)),
            t if t.is_integer() => Some((19, 0)),
            Decimal128(p, s) | Decimal256(p, s) => Some((*p as i16 - *s as i16, *s as i16)),
            _ => None,
        }
    };
    Some(match (a, b) {
        _ if a == b => match a {
            Float16 | Float32 => Float64,
            Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32 => Int64,
            UInt64 => Decimal128(20, 0),
            // One rendering of an instant, whatever zone both sides were written in.
            Timestamp(unit, Some(_)) => Timestamp(*unit, Some("UTC".into())),
            other => other.clone(),
        },
        (a, b) if a.is_floating() && is_numeric(b) || b.is_floating() && is_numeric(a) => Float64,
        (a, b) if a.is_integer() && b.is_integer() && *a != UInt64 && *b != UInt64 => Int64,
        (a, b) if is_numeric(a) && is_numeric(b) => {
            let (ia, sa) = digits(a)?;
            let (ib, sb) = digits(b)?;
            let s = sa.max(sb).max(0);
            let p = (ia.max(ib) + s).max(1);
            if p <= 38 {
                Decimal128(p as u8, s as i8)
            } else if p <= 76 {
                Decimal256(p as u8, s as i8)
            } else {
                return None;
            }
        }
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => Utf8,
        (
            Binary | LargeBinary | BinaryView | FixedSizeBinary(_),
            Binary | LargeBinary | BinaryView | FixedSizeBinary(_),
        ) => Binary,
        (Timestamp(ua, za), Timestamp(ub, zb)) => {
            let unit = finer(*ua, *ub);
            let zone = if za.is_some() || zb.is_some() {
                Some("UTC".into())
            } else {
                None
            };
            Timestamp(unit, zone)
        }
        (Date32 | Date64, Date32 | Date64) => Date64,
        (Time32(ua) | Time64(ua), Time32(ub) | Time64(ub)) => match finer(*ua, *ub) {
            u @ (TimeUnit::Second | TimeUnit::Millisecond) => Time32(u),
            u => Time64(u),
        },
        (Duration(ua), Duration(ub)) => Duration(finer(*ua, *ub)),
        _ => return None,
    })
}

/// The type of a column's values: a dictionary's value type, any other type itself.
pub fn value_type(t: &DataType) -> &DataType {
    match t {
        DataType::Dictionary(_, v) => value_type(v),
        t => t,
    }
}

/// Struct, list and map columns: not compared (see [`common_type`]).
pub fn is_nested(t: &DataType) -> bool {
    t.is_nested()
}

fn unit_name(u: TimeUnit) -> &'static str {
    match u {
        TimeUnit::Second => "seconds",
        TimeUnit::Millisecond => "milliseconds",
        TimeUnit::Microsecond => "microseconds",
        TimeUnit::Nanosecond => "nanoseconds",
    }
}

fn finer(a: TimeUnit, b: TimeUnit) -> TimeUnit {
    fn rank(u: TimeUnit) -> u8 {
        match u {
            TimeUnit::Second => 0,
            TimeUnit::Millisecond => 1,
            TimeUnit::Microsecond => 2,
            TimeUnit::Nanosecond => 3,
        }
    }
    if rank(a) >= rank(b) { a } else { b }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use std::sync::Arc;

    #[test]
    fn the_diff_carries_each_value_once() {
        use DataType::*;
        use arrow::datatypes::Field;
        let entity = crate::job::parse_entity("name = \"t\"\nkey = [\"id\"]").unwrap();
        let schema = |b: DataType| {
            Schema::new(vec![
                Field::new("id", Int64, false),
                Field::new("a", Utf8, true),
                Field::new("b", b, true),
            ])
        };
        let (source, replica) = (schema(Int32), schema(Int64));
        let plan =
            EntityPlan::try_new(&entity, &source, &replica, std::path::Path::new("t")).unwrap();
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        // `a` has one type on both sides, so each side's compared, current and to-set
        // values are one column. `b` is compared as Int64, the replica's type: the
        // source's value cast to it is also the replica's value to set, and the
        // replica's raw value is also its current one.
        assert_eq!(
            plan.diff_aliases(),
            pairs(&[
                ("rset1", "sc0"),
                ("sset1", "rc0"),
                ("rcur1", "rc0"),
                ("scur1", "sc0"),
                ("rset2", "sc1"),
                ("rcur2", "rc1"),
            ])
        );
        let sql = plan.diff_sql("summary", "source", "replica", None);
        for name in [
            "sc0", "rc0", "sc1", "rc1", "sset2", "scur2", "rset0", "scur0",
        ] {
            assert!(sql.contains(&format!("AS \"{name}\"")), "{name} in {sql}");
        }
        for (name, _) in plan.diff_aliases() {
            assert!(!sql.contains(&format!("AS \"{name}\"")), "{name} in {sql}");
        }
    }

    #[test]
    fn common_types() {
        use DataType::*;
        assert_eq!(common_type(&Int32, &Int64), Some(Int64));
        assert_eq!(
            common_type(&Decimal128(10, 2), &Decimal128(14, 4)),
            Some(Decimal128(14, 4))
        );
        assert_eq!(
            common_type(&Int64, &Decimal128(10, 2)),
            Some(Decimal128(21, 2))
        );
        assert_eq!(common_type(&Float32, &Decimal128(10, 2)), Some(Float64));
        assert_eq!(
            common_type(
                &Timestamp(TimeUnit::Millisecond, None),
                &Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
            ),
            Some(Timestamp(TimeUnit::Microsecond, Some("UTC".into())))
        );
        assert_eq!(common_type(&Utf8, &Int64), None);
        assert_eq!(common_type(&Utf8View, &Utf8), Some(Utf8));
    }

    #[test]
    fn common_types_hold_both_sides() {
        use DataType::*;
        let dict = |v: DataType| Dictionary(Box::new(Int32), Box::new(v));
        assert_eq!(common_type(&dict(Utf8), &Utf8View), Some(Utf8));
        assert_eq!(common_type(&dict(Int16), &Int64), Some(Int64));
        assert_eq!(common_type(&UInt64, &Int64), Some(Decimal128(20, 0)));
        assert_eq!(
            common_type(&Decimal128(38, 0), &Decimal128(38, 10)),
            Some(Decimal256(48, 10))
        );
        assert_eq!(
            common_type(&Decimal256(50, 2), &Int64),
            Some(Decimal256(50, 2))
        );
        assert_eq!(common_type(&Date32, &Date64), Some(Date64));
        assert_eq!(
            common_type(&Time32(TimeUnit::Second), &Time64(TimeUnit::Nanosecond)),
            Some(Time64(TimeUnit::Nanosecond))
        );
        assert_eq!(common_type(&FixedSizeBinary(16), &Binary), Some(Binary));
        let list = List(Arc::new(arrow::datatypes::Field::new("item", Int64, true)));
        assert_eq!(common_type(&list, &list), None);
    }

    #[test]
    fn holds_all_only_when_no_value_is_lost() {
        use DataType::*;
        assert!(holds_all(&Int32, &Int64));
        assert!(holds_all(&UInt32, &Int64));
        assert!(!holds_all(&UInt64, &Int64));
        assert!(!holds_all(&Int64, &Int32));
        assert!(!holds_all(&Int8, &UInt64));
        assert!(holds_all(&Int64, &Decimal128(19, 0)));
        assert!(!holds_all(&Int64, &Decimal128(18, 0)));
        assert!(holds_all(&Decimal128(10, 2), &Decimal128(12, 4)));
        assert!(!holds_all(&Decimal128(10, 4), &Decimal128(10, 2)));
        assert!(!holds_all(&Float64, &Float32));
        assert!(!holds_all(&Float64, &Int64));
        assert!(!holds_all(&Int64, &Float64));
        assert!(!holds_all(
            &Timestamp(TimeUnit::Nanosecond, None),
            &Timestamp(TimeUnit::Microsecond, None)
        ));
    }

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
    }

    #[test]
    fn cast_type_names_round_trip() {
        for t in [
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            DataType::Decimal128(21, 2),
            DataType::Utf8,
        ] {
            assert_eq!(DataType::from_str(&t.to_string()).unwrap(), t);
        }
    }
}
