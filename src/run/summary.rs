//! The run summary: what `summary.json` holds and `recon run` prints, per entity and in
//! total.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::diff::Count;
use crate::diff::plan::OneSided;
use crate::snapshot::Snapshot;
use crate::write::vocabulary::{Action, Kind, Op};

#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub job: String,
    pub run_id: String,
    pub run_date: NaiveDate,
    /// `success` or `guardrail_tripped`.
    pub status: String,
    /// The run in numbers, summed over its entities.
    pub totals: Totals,
    pub source: String,
    pub replica: String,
    pub output: String,
    pub manifest: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub entities: Vec<EntitySummary>,
    pub durations_ms: BTreeMap<String, u64>,
    /// What the export stage wrote, when this run exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<crate::export::ExportReport>,
}

#[derive(Debug, Serialize)]
pub struct EntitySummary {
    pub entity: String,
    pub rows: SideRows,
    pub discrepancies: u64,
    pub counts: Vec<Count>,
    /// Discrepancy rows per action: `correct_replica` and `correct_source` (correctable;
    /// withheld when the guardrail tripped) and `report_only`.
    pub actions: BTreeMap<Action, u64>,
    /// Columns of one snapshot with no partner in the other: nothing compares them.
    #[serde(skip_serializing_if = "OneSided::is_empty")]
    pub one_sided: OneSided,
    /// Corrections per system and op (also when withheld).
    pub corrections: BTreeMap<String, BTreeMap<Op, u64>>,
    pub guardrail: GuardrailVerdict,
    pub inputs: Inputs,
    /// How the key summary matched the sides: `merge`, `join` or `aggregation`.
    pub key_summary_plan: &'static str,
    /// Corrections withheld because the corrected column cannot hold the value exactly
    /// (reason `unrepresentable`), per field.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unrepresentable: BTreeMap<String, u64>,
    pub durations_ms: BTreeMap<String, u64>,
    /// Corrections that an apply of an earlier run date already applied and that are
    /// back tonight: the fix did not stick (replication overwrote it, or a writer).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reappeared: Vec<crate::write::events::Reappeared>,
}

#[derive(Debug, Serialize)]
pub struct SideRows {
    pub source: u64,
    pub replica: u64,
}

#[derive(Debug, Serialize)]
pub struct Inputs {
    pub source: Snapshot,
    pub replica: Snapshot,
}

#[derive(Debug, Serialize)]
pub struct GuardrailVerdict {
    pub max_correction_share: f64,
    /// Corrections of the entity, to both systems.
    pub corrections: u64,
    /// Keys on either side: the source's rows and the replica's rows whose key the
    /// source does not have live (`extra_in_replica`).
    pub rows: u64,
    /// The largest share of `rows` that corrections to one system touch, in [0, 1]: a
    /// key gets at most one correction per system.
    pub share: f64,
    pub max_row_drop: f64,
    /// Rows in the previous committed run, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousRows>,
    pub tripped: bool,
    /// The limits the entity went past: `max_correction_share`, `max_row_drop`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tripped_by: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Rows per side of one entity in an earlier committed run.
#[derive(Debug, Clone, Serialize)]
pub struct PreviousRows {
    pub run_date: NaiveDate,
    pub run_id: String,
    pub source: u64,
    pub replica: u64,
}

/// A run's numbers summed over its entities: what a scheduler or a dashboard reads first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub entities: usize,
    pub source_rows: u64,
    pub replica_rows: u64,
    /// Discrepancy rows of every kind.
    pub discrepancies: u64,
    /// Discrepancy rows per kind.
    pub kinds: BTreeMap<Kind, u64>,
    /// Discrepancy rows a correction repairs (`correct_replica`, `correct_source`),
    /// withheld ones included.
    pub correctable: u64,
    /// Discrepancy rows reported only: data-quality rows, fields the job owns to
    /// nobody (`owner = "none"`), extra rows under `deletes = "report"`, and corrections
    /// withheld as `unrepresentable`.
    pub report_only: u64,
    /// Corrections written, per system and op (a tripped entity's are not written).
    pub corrections: BTreeMap<String, BTreeMap<Op, u64>>,
    /// Corrections withheld by a tripped guardrail.
    pub withheld_corrections: u64,
    /// Corrections withheld because the corrected column cannot hold the value.
    pub unrepresentable: u64,
    /// Entities whose guardrail tripped.
    pub tripped: Vec<String>,
    /// Columns on one side only, over every entity.
    pub one_sided_columns: usize,
}

impl Totals {
    pub fn of(entities: &[EntitySummary]) -> Self {
        let mut t = Totals {
            entities: entities.len(),
            ..Totals::default()
        };
        for e in entities {
            t.source_rows += e.rows.source;
            t.replica_rows += e.rows.replica;
            t.discrepancies += e.discrepancies;
            for c in &e.counts {
                *t.kinds.entry(c.kind).or_default() += c.count;
            }
            for (action, n) in &e.actions {
                match action {
                    Action::ReportOnly => t.report_only += n,
                    Action::CorrectReplica | Action::CorrectSource => t.correctable += n,
                }
            }
            if e.guardrail.tripped {
                t.tripped.push(e.entity.clone());
                t.withheld_corrections += e.guardrail.corrections;
            } else {
                for (system, ops) in &e.corrections {
                    let into = t.corrections.entry(system.clone()).or_default();
                    for (op, n) in ops {
                        *into.entry(*op).or_default() += n;
                    }
                }
            }
            t.unrepresentable += e.unrepresentable.values().sum::<u64>();
            t.one_sided_columns += e.one_sided.source.len() + e.one_sided.replica.len();
        }
        t
    }
}
