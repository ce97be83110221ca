//! The plan of one entity's diff: which columns are keys, compared fields and correction
//! payload, in which common type each pair is compared, and the SQL that does it,
//! rendered from `queries/*.sql` with quoted identifiers only.

use arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::logical_expr::ScalarUDF;

use super::compare::FieldComparator;
use super::fingerprint::{self, Fingerprint};
use crate::error::{Error, Result};
use crate::job::{DeletePolicy, EntityConfig, FieldRule, Owner};

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

/// The type a snapshot column is read in. Strings are read as views (`Utf8View`), which
/// point into the decoded Parquet pages instead of copying every value into an offset
/// buffer; what recon writes is cast back to the snapshot's declared types, so the output
/// contract does not change. Other types are read as declared.
pub fn scan_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 => DataType::Utf8View,
        t => t.clone(),
    }
}

/// A snapshot schema as the queries see it: each column in its [`scan_type`].
pub fn scan_schema(schema: &Schema) -> Schema {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(scan_type(f.data_type())))
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
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
}

pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Fills `{name}` slots of a template in one pass, so filled-in text is never rescanned.
fn fill(template: &str, parts: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}').and_then(|end| {
            let name = &after[..end];
            parts
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (end, *v))
        }) {
            Some((end, value)) => {
                out.push_str(value);
                rest = &after[end + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn cast_to(expr: &str, from: &DataType, to: &DataType) -> String {
    if from == to {
        expr.to_string()
    } else {
        format!("arrow_cast({expr}, '{to}')")
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
        for from in entity.rename.keys() {
            if source.field_with_name(from).is_err() {
                return Err(err(format!(
                    "rename names column `{from}`, which is not in the source snapshot ({})",
                    columns(source)
                )));
            }
        }
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
            if entity.key.contains(f.name()) {
                continue;
            }
            if replica.field_with_name(&replica_name(f.name())).is_ok() {
                mapped.push(lookup(f.name(), "field")?);
            }
        }
        let index_of = |name: &str| mapped.iter().position(|m| m.source == name);

        let (source_soft, replica_soft) = match &entity.deletes {
            DeletePolicy::Soft {
                column,
                deleted_value,
            } => {
                let on = |schema: &Schema, name: &str, side: Side| -> Result<Option<SoftColumn>> {
                    let Ok(f) = schema.field_with_name(name) else {
                        return Ok(None);
                    };
                    let marker = match f.data_type() {
                        DataType::Boolean => SoftMarker::Bool(deleted_value.unwrap_or(true)),
                        t @ (DataType::Timestamp(..) | DataType::Date32 | DataType::Date64) => {
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
        })
    }

    pub fn keys(&self) -> &[MappedColumn] {
        &self.mapped[..self.key_len]
    }

    pub fn field_column(&self, f: &FieldPlan) -> &MappedColumn {
        &self.mapped[f.column]
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
    pub fn null_keys_sql(&self, side: Side, table: &str) -> String {
        let (keys, is_null, _) = self.key_lists(side, "");
        fill(
            NULL_KEYS_SQL,
            &[
                ("keys", &keys),
                ("key_is_null", &is_null),
                ("table", &quote(table)),
            ],
        )
    }

    /// Complete keys of one side that occur more than once, with their row counts, in
    /// the side's column names and types, read from the key summary table `summary`.
    pub fn duplicate_keys_sql(&self, side: Side, summary: &str) -> String {
        let keys = self
            .keys()
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let common = k.common.as_ref().expect("keys have a common type");
                format!(
                    "{} AS {}",
                    cast_to(&format!("\"k{i}\""), &scan_type(common), k.data_type(side)),
                    quote(k.name(side))
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let rows = match side {
            Side::Source => "\"__source_rows\"",
            Side::Replica => "\"__replica_rows\"",
        };
        fill(
            DUPLICATE_KEYS_SQL,
            &[
                ("keys", &keys),
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

    /// Every function the entity's queries call: the comparators and the fingerprint.
    pub fn functions(&self) -> Vec<ScalarUDF> {
        let mut udfs = self.comparators();
        udfs.push(self.fingerprint());
        udfs
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
        let replica_values = self
            .mapped
            .iter()
            .enumerate()
            .map(|(j, m)| format!("t.{} AS \"v{j}\"", quote(m.name(Side::Replica))))
            .collect::<Vec<_>>()
            .join(", ");
        let carried_values = (0..self.mapped.len())
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
            self.mapped
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    format!(
                        ",\n       t.{} AS \"{}{j}\"",
                        quote(m.name(side)),
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
            .mapped
            .iter()
            .enumerate()
            .map(|(j, m)| {
                let v = format!("\"v{j}\"");
                let value = cast_to(&v, &m.scan_type(Side::Replica), &m.replica_type);
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
        for (j, m) in self.mapped.iter().enumerate() {
            let col = format!("t.{}", quote(m.name(side)));
            let value = cast_to(&col, &m.scan_type(side), m.data_type(side));
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
            let rset = value(Side::Source, j, &m.replica_type);
            let sset = value(Side::Replica, j, &m.source_type);
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
            self.mapped
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    let v = format!("\"{prefix}{j}\"");
                    let value = cast_to(&v, &m.scan_type(side), m.data_type(side));
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
        let side_values = |alias: &str, prefix: &str| {
            (0..self.mapped.len())
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
                ("source_values", &side_values("sp", "sv")),
                ("replica_values", &side_values("rp", "rv")),
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
    format!(
        "{what} `{}` cannot be compared: {} in the source snapshot, {} in the replica snapshot (as `{}`)",
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
    t.is_integer() || t.is_floating() || matches!(t, DataType::Decimal128(..))
}

/// The type two columns are compared in, or `None` if they cannot be compared by value.
/// Integers of any width compare as Int64 (UInt64 as Decimal(20,0)); decimals at the
/// larger scale; any float makes Float64; string layouts unify; timestamps compare at
/// the finer unit, in UTC when either side has a zone (naive values are taken as UTC).
/// The key summary sees it as its [`scan_type`].
pub fn common_type(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    let int_digits = |t: &DataType| -> Option<(u8, i8)> {
        match t {
            UInt64 => Some((20, 0)),
            t if t.is_integer() => Some((19, 0)),
            Decimal128(p, s) => Some((*p, *s)),
            _ => None,
        }
    };
    Some(match (a, b) {
        _ if a == b => match a {
            Float16 | Float32 => Float64,
            Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32 => Int64,
            UInt64 => Decimal128(20, 0),
            other => other.clone(),
        },
        (a, b) if a.is_floating() && is_numeric(b) || b.is_floating() && is_numeric(a) => Float64,
        (a, b) if a.is_integer() && b.is_integer() && *a != UInt64 && *b != UInt64 => Int64,
        (a, b) if is_numeric(a) && is_numeric(b) => {
            let (pa, sa) = int_digits(a)?;
            let (pb, sb) = int_digits(b)?;
            let s = sa.max(sb).max(0);
            let ints = (pa as i16 - sa as i16).max(pb as i16 - sb as i16);
            let p = (ints + s as i16).clamp(1, 38) as u8;
            Decimal128(p, s)
        }
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => Utf8,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => Binary,
        (Timestamp(ua, za), Timestamp(ub, zb)) => {
            let unit = finer(*ua, *ub);
            let zone = if za.is_some() || zb.is_some() {
                Some("UTC".into())
            } else {
                None
            };
            Timestamp(unit, zone)
        }
        (Date32 | Date64, Date32 | Date64) => Date32,
        _ => return None,
    })
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
