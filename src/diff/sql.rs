//! The entity's queries as SQL text, rendered from the templates in `queries/*.sql`
//! with quoted identifiers and the plan's expressions only: no value from the data or
//! the job is ever spliced in (each field's rule lives in its own function,
//! [`super::compare`]). The output columns' names are [`super::columns`]'s.

use arrow::datatypes::DataType;

use super::columns::DiffColumns;
use super::fingerprint;
use super::plan::{EntityPlan, Side, SoftColumn, SoftMarker, fit_name};
use super::types::value_type;
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
            Side::Source => quote(DiffColumns::SOURCE_ROWS),
            Side::Replica => quote(DiffColumns::REPLICA_ROWS),
        };
        fill(
            DUPLICATE_KEYS_SQL,
            &[
                ("keys", &keys),
                ("order", &keys),
                ("rows", &rows),
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
                format!("{key} AS {}", quote(&DiffColumns::key(i)))
            })
            .collect()
    }

    /// The generated key column names, `"k0", "k1", …`, with an optional alias prefix.
    fn key_names(&self, alias: &str) -> String {
        (0..self.key_len)
            .map(|i| format!("{alias}{}", quote(&DiffColumns::key(i))))
            .collect::<Vec<_>>()
            .join(", ")
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
            .map(|i| {
                let k = quote(&DiffColumns::key(i));
                format!("coalesce(s.{k}, r.{k}) AS {k}")
            })
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
            .map(|i| {
                let k = quote(&DiffColumns::key(i));
                format!("s.{k} = r.{k}")
            })
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
    fn diff_columns(&self) -> SelectList {
        self.diff_columns_from("sj", "rj")
    }

    /// [`Self::diff_columns`] over the raw values `{s}."sv{j}"` and `{r}."rv{j}"`, and
    /// the keys `{s}."k{i}"`.
    fn diff_columns_from(&self, s: &str, r: &str) -> SelectList {
        let raw = |side: Side, j: usize| match side {
            Side::Source => format!("{s}.\"sv{j}\""),
            Side::Replica => format!("{r}.\"rv{j}\""),
        };
        let value = |side: Side, j: usize, to: &DataType| {
            cast_to(&raw(side, j), self.mapped[j].data_type(side), to)
        };
        let mut out = SelectList::default();
        for i in 0..self.key_len {
            out.push(
                format!("{s}.{}", quote(&DiffColumns::key(i))),
                DiffColumns::key(i),
            );
        }
        for (i, f) in self.fields.iter().enumerate() {
            let s = value(Side::Source, f.column, &f.common);
            let r = value(Side::Replica, f.column, &f.common);
            out.push(format!("recon_cmp_{i}({s}, {r})"), DiffColumns::reason(i));
            out.push(s, DiffColumns::compared(Side::Source, i));
            out.push(r, DiffColumns::compared(Side::Replica, i));
        }
        for (i, f) in self.fields.iter().enumerate() {
            if let Some(n) = f.newest {
                let (j, common) = &self.newest[n];
                let (r, s) = (
                    value(Side::Replica, *j, common),
                    value(Side::Source, *j, common),
                );
                out.push(format!("{r} > {s}"), DiffColumns::replica_newer(i));
            }
        }
        for (j, m) in self.mapped.iter().enumerate() {
            let rset = self.set_value(Side::Replica, j, raw(Side::Source, j));
            let sset = self.set_value(Side::Source, j, raw(Side::Replica, j));
            let (rcur, scur) = (raw(Side::Replica, j), raw(Side::Source, j));
            if m.is_key {
                // Keys to set come from whichever side has the row.
                out.push(
                    format!("coalesce({rset}, {rcur})"),
                    DiffColumns::to_set(Side::Replica, j),
                );
                out.push(
                    format!("coalesce({sset}, {scur})"),
                    DiffColumns::to_set(Side::Source, j),
                );
            } else {
                out.push(rset, DiffColumns::to_set(Side::Replica, j));
                out.push(sset, DiffColumns::to_set(Side::Source, j));
            }
            out.push(rcur, DiffColumns::current(Side::Replica, j));
            out.push(scur, DiffColumns::current(Side::Source, j));
        }
        if self.extra_soft().is_some() {
            let j = self.mapped.len();
            out.push(
                raw(Side::Replica, j),
                DiffColumns::current(Side::Replica, j),
            );
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
                .map(|i| format!("j.{} IS NOT NULL", quote(&DiffColumns::reason(i))))
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
                .map(|i| {
                    let k = quote(&DiffColumns::key(i));
                    format!("{alias}.{k} = d.{k}")
                })
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
            .map(|i| {
                let k = quote(&DiffColumns::key(i));
                format!("sj.{k} = rj.{k}")
            })
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
struct SelectList {
    /// `expr AS "name"`, in order.
    columns: Vec<String>,
    /// (name, name of the earlier column with the same expression).
    aliases: Vec<(String, String)>,
    /// Expression → its column's name.
    seen: std::collections::HashMap<String, String>,
}

impl SelectList {
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Schema;

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
}
