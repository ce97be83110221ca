//! The names of the columns the entity's queries give and the stage reads back: one
//! owner for the contract between the SQL that [`super::sql`] renders and the code that
//! reads its rows ([`super::classify`], [`super::corrections`], [`super::key_plan`]).
//! Nothing else spells these names.

use arrow::array::{ArrayRef, RecordBatch};

use super::plan::Side;

/// The output columns of the diff query (queries/diff.sql, queries/pairs_diff.sql) and
/// of the data-quality and key-summary queries.
pub struct DiffColumns;

impl DiffColumns {
    /// The row's class: a [`crate::write::vocabulary::Kind`] word for a key on one
    /// side only (`missing_in_replica`, `extra_in_replica`), else `both`.
    pub const CLASS: &'static str = "__class";
    /// A null-key or duplicate-key query's row count per key.
    pub const ROWS: &'static str = "__rows";
    /// A key join pair's source side is there (1) or absent (0).
    pub const SOURCE_ROW: &'static str = "__sr";
    /// A key join pair's replica side is there (1) or absent (0).
    pub const REPLICA_ROW: &'static str = "__rr";
    /// The key summary's row counts per key.
    pub const SOURCE_ROWS: &'static str = "__source_rows";
    pub const REPLICA_ROWS: &'static str = "__replica_rows";

    /// Key column `i`, in the keys' common type.
    pub fn key(i: usize) -> String {
        format!("k{i}")
    }

    /// Compared field `i`'s reason: NULL when the values are equal under its rule.
    pub fn reason(i: usize) -> String {
        format!("reason{i}")
    }

    /// Compared field `i`'s value on `side`, in the field's common type.
    pub fn compared(side: Side, i: usize) -> String {
        match side {
            Side::Source => format!("sc{i}"),
            Side::Replica => format!("rc{i}"),
        }
    }

    /// Compared field `i` (owner `newest`): the replica's `by` value is the later.
    pub fn replica_newer(i: usize) -> String {
        format!("rnewer{i}")
    }

    /// Mapped column `j`'s value to set on `side`, in that side's type (NULL where the
    /// exact cast does not hold the other side's value).
    pub fn to_set(side: Side, j: usize) -> String {
        match side {
            Side::Replica => format!("rset{j}"),
            Side::Source => format!("sset{j}"),
        }
    }

    /// Mapped column `j`'s current value on `side`, as the snapshot holds it; for the
    /// replica, `j = mapped.len()` is its own soft-delete column
    /// ([`EntityPlan::extra_soft`]).
    pub fn current(side: Side, j: usize) -> String {
        match side {
            Side::Replica => format!("rcur{j}"),
            Side::Source => format!("scur{j}"),
        }
    }
}

/// The column `name` of one of the entity's query outputs. A name missing is a bug in
/// this module's contract, not bad input.
pub fn column<'b>(batch: &'b RecordBatch, name: &str) -> &'b ArrayRef {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("the query output has no column {name}"))
}
