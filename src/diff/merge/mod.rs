//! The key merge of the key summary: [`MergePairsExec`], a DataFusion operator that
//! pairs the rows of two snapshots sorted by their key, in one pass over each, and
//! emits only the pairs that need a look, in key order.
//!
//! Snapshots are often written in key order: a table read in primary-key order (an
//! InnoDB table scan, a query ending in `ORDER BY` the key) gives them so, and so does
//! `recon generate`. When both are, the two sides can be merged like sorted lists, with
//! no hash table and no second read: each side streams past once, holding a few
//! batches, and the pairs carry both sides' values to the diff, which reads them as
//! they come through the table [`MergedPairs`] (queries/pairs_diff.sql): the key
//! summary and the diff are one pass, and the pairs are never held. The hash join of
//! queries/key_pairs.sql instead holds the source side's keys in memory, and the diff
//! then reads the source snapshot again for the keys that differ.
//!
//! Its inputs are two SQL queries, one per side (queries/key_side.sql), each planned
//! as one partition so that its rows come in file order: the key columns `k0`, `k1`,
//! …, the fingerprint `__h` of the live row's compared fields (NULL when the row is
//! soft-deleted) and the side's raw mapped columns. Each input runs on a task of its
//! own, so the two sides are decoded on two cores while the merge walks them.
//!
//! The output has the columns of queries/key_pairs.sql: the keys, `__sr`, `__sl`,
//! `__rr`, `__rl` (the source and replica have the row, and have it live: 0 or 1),
//! `__x` (the XOR of the live rows' fingerprints), the source's values `sv0`, `sv1`, …
//! and the replica's `v0`, `v1`, …, NULL for a side that lacks the row. A pair needs a
//! look when a side lacks the row or when the fingerprints differ (a NULL differs from
//! a value).
//!
//! The merge is exact only when each side's keys strictly ascend (in the order of
//! arrow's row format, which for integers, dates, timestamps and strings is the
//! natural order, strings by bytes). The operator checks that as it goes and stops at
//! the first key that does not: the query then fails with [`NotMergeable`], the
//! outputs written so far are dropped, and the caller uses the hash join instead. A
//! side whose first keys are far ahead of the other's shows its disorder only once the
//! other side has caught up, every row of which is a pair by then; so recon first
//! checks the order from the row groups' key statistics or, when they cannot tell, by
//! this merge over the key columns alone, which reads a small share of the snapshots,
//! and runs the full merge only when the check passes.
//!
//! As DataFusion's `joins/sort_merge_join/`, the operator is a folder: `exec.rs` holds
//! the plan node [`MergePairsExec`] and the table [`MergedPairs`] over it, `stream.rs`
//! the merge itself (the state of one execution, walking both sides), `tests.rs` its
//! tests.

mod exec;
mod stream;
#[cfg(test)]
mod tests;

pub use exec::{MergePairsExec, MergedPairs};
pub use stream::NotMergeable;
