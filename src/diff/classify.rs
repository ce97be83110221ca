//! Classification: each row of the diff query becomes discrepancy rows and, where the
//! owner allows and the corrected column holds the value exactly, a correction for one
//! system; [`Classifier`] streams them to the run's files. Rows are classified on the
//! blocking pool, one batch per core ([`Rules::classify`]), and written in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::common::ScalarValue;

use super::columns::{DiffColumns, column};
use super::corrections::{PendingCorrection, build_corrections, correction_schema, soft_value};
use super::discrepancies::{Discrepancy, DiscrepancyRows, FieldColumns, count_actions};
use super::plan::{EntityPlan, Side};
use super::{Count, EntityResult, RunStamp};
use crate::error::Result;
use crate::job::{DeletePolicy, Owner};
use crate::write::encode::{KeyJson, correction_id};
use crate::write::events::{EventRenderer, Events, EventsSink, Reappeared, Rendered};
use crate::write::vocabulary::{Action, Kind, Op, Reason};
use crate::write::{FileEntry, ParquetSink, RunLayout, discrepancy_schema};

/// One system's correction file for the entity and its events file, opened at its
/// first correction.
#[derive(Default)]
pub(super) struct CorrectionSink {
    sink: Option<(ParquetSink, EventsSink)>,
    counts: BTreeMap<Op, u64>,
    reappeared: Vec<Reappeared>,
}

/// What classifying a diff batch needs, owned, so that batches are classified on the
/// blocking pool, one per core.
pub(super) struct Rules {
    plan: EntityPlan,
    stamp: RunStamp,
    /// Value a soft delete sets in the replica's soft-delete column.
    soft_deleted: Option<ScalarValue>,
    /// Per correction slot (the replica's corrections first): the side corrected, its
    /// system and its correction file's schema.
    slots: [(Side, String, SchemaRef); 2],
    /// Per correction slot: the events of its corrections.
    events: [EventRenderer; 2],
}

/// How many discrepancies of each kind one diff batch has.
pub(super) struct Tally {
    missing: u64,
    extra: u64,
    /// Field mismatches per compared field (index into `plan.fields`).
    mismatches: Vec<u64>,
    /// Corrections withheld because the corrected column cannot hold the value, per
    /// mapped column (index into `plan.mapped`).
    unrepresentable: Vec<u64>,
}

/// The outputs of one diff batch.
pub(super) struct Classified {
    pub(super) discrepancies: RecordBatch,
    pub(super) tally: Tally,
    /// Per correction slot, when the batch has corrections for it.
    pub(super) corrections: [Option<SlotCorrections>; 2],
}

/// One correction slot's share of a diff batch.
pub(super) struct SlotCorrections {
    /// The correction rows, as the correction file holds them.
    rows: RecordBatch,
    /// How many of each op.
    ops: BTreeMap<Op, u64>,
    events: Rendered,
}

/// Builds discrepancy and correction rows for one entity and streams them out.
pub(super) struct Classifier<'a> {
    pub(super) plan: &'a EntityPlan,
    pub(super) stamp: &'a RunStamp,
    pub(super) layout: &'a RunLayout,
    pub(super) events: &'a Events,
    pub(super) discrepancies: ParquetSink,
    /// Data-quality rows not yet written.
    pub(super) rows: DiscrepancyRows,
    pub(super) counts: BTreeMap<(Kind, Option<String>), u64>,
    /// Discrepancy rows per action.
    pub(super) actions: BTreeMap<Action, u64>,
    /// Corrections withheld as unrepresentable, per field (source name).
    pub(super) unrepresentable: BTreeMap<String, u64>,
    pub(super) corrections: [CorrectionSink; 2],
    pub(super) rules: Arc<Rules>,
}

impl<'a> Classifier<'a> {
    pub(super) fn try_new(
        plan: &'a EntityPlan,
        stamp: &'a RunStamp,
        layout: &'a RunLayout,
        events: &'a Events,
    ) -> Result<Self> {
        let entity = &plan.entity.name;
        let discrepancies =
            ParquetSink::discrepancies(layout, layout.discrepancies(entity), discrepancy_schema())?;
        let soft_deleted = match &plan.replica_soft {
            Some(s) => Some(soft_value(s, stamp.run_date, true)?),
            None => None,
        };
        let slot =
            |side: Side, system: &str| (side, system.to_string(), correction_schema(plan, side));
        let rules = Rules {
            plan: plan.clone(),
            stamp: stamp.clone(),
            soft_deleted,
            slots: [
                slot(Side::Replica, &stamp.replica),
                slot(Side::Source, &stamp.source),
            ],
            events: [&stamp.replica, &stamp.source]
                .map(|system| events.renderer(system, &plan.entity.name)),
        };
        Ok(Classifier {
            plan,
            stamp,
            layout,
            events,
            discrepancies,
            rows: DiscrepancyRows::default(),
            counts: BTreeMap::new(),
            actions: BTreeMap::new(),
            unrepresentable: BTreeMap::new(),
            corrections: Default::default(),
            rules: Arc::new(rules),
        })
    }

    pub(super) fn count(&mut self, kind: Kind, field: Option<&str>, n: u64) {
        if n > 0 {
            *self
                .counts
                .entry((kind, field.map(str::to_string)))
                .or_default() += n;
        }
    }

    /// Rows of a null-key or duplicate-key query: raw key columns, then `__rows`.
    pub(super) fn quality(&mut self, batch: &RecordBatch, kind: Kind, side: Side) -> Result<()> {
        let keys = key_json(self.plan, (0..self.plan.key_len).map(|i| batch.column(i)))?;
        let n = batch
            .column(self.plan.key_len)
            .as_primitive::<Int64Type>()
            .clone();
        let reason = match side {
            Side::Source => Reason::InSource,
            Side::Replica => Reason::InReplica,
        };
        for row in 0..batch.num_rows() {
            let key = keys.json(row);
            let count = n.value(row).to_string();
            let (sv, rv) = match side {
                Side::Source => (Some(count.as_str()), None),
                Side::Replica => (None, Some(count.as_str())),
            };
            self.rows.push(
                self.stamp,
                &self.plan.entity.name,
                Discrepancy {
                    source_value: sv,
                    replica_value: rv,
                    reason: Some(reason),
                    ..Discrepancy::new(&key, kind, Action::ReportOnly)
                },
            );
        }
        self.count(kind, None, batch.num_rows() as u64);
        Ok(())
    }

    /// Writes out what a diff batch gave.
    pub(super) async fn absorb(&mut self, c: Classified) -> Result<()> {
        if c.discrepancies.num_rows() > 0 {
            count_actions(&c.discrepancies, &mut self.actions)?;
            self.discrepancies.write(&c.discrepancies).await?;
        }
        self.count(Kind::MissingInReplica, None, c.tally.missing);
        self.count(Kind::ExtraInReplica, None, c.tally.extra);
        let plan = self.plan;
        for (f, n) in plan.fields.iter().zip(c.tally.mismatches) {
            self.count(Kind::FieldMismatch, Some(&plan.field_column(f).source), n);
        }
        for (m, n) in plan.mapped.iter().zip(c.tally.unrepresentable) {
            if n > 0 {
                *self.unrepresentable.entry(m.source.clone()).or_default() += n;
            }
        }
        for (slot, out) in c.corrections.into_iter().enumerate() {
            let Some(SlotCorrections {
                rows: batch,
                ops,
                events,
            }) = out
            else {
                continue;
            };
            let (_, system, schema) = &self.rules.slots[slot];
            let c = &mut self.corrections[slot];
            for (op, n) in ops {
                *c.counts.entry(op).or_default() += n;
            }
            c.reappeared.extend(events.reappeared);
            if c.sink.is_none() {
                let entity = &plan.entity.name;
                c.sink = Some((
                    ParquetSink::corrections(
                        self.layout,
                        self.layout.corrections(system, entity),
                        Arc::clone(schema),
                    )?,
                    self.events.sink(system, entity),
                ));
            }
            let (corrections, event_sink) = c.sink.as_mut().expect("just set");
            corrections.write(&batch).await?;
            event_sink.write(events.body, events.events).await?;
        }
        Ok(())
    }

    pub(super) async fn flush_discrepancies(&mut self) -> Result<()> {
        if self.rows.len() > 0 {
            let batch = self.rows.finish()?;
            count_actions(&batch, &mut self.actions)?;
            self.discrepancies.write(&batch).await?;
        }
        Ok(())
    }

    pub(super) async fn finish(
        mut self,
        key_summary_ms: u64,
        diff_ms: u64,
        key_summary_plan: &'static str,
    ) -> Result<EntityResult> {
        self.flush_discrepancies().await?;
        let entity = self.plan.entity.name.clone();
        let discrepancy_file = self
            .discrepancies
            .finish(FileEntry {
                kind: "discrepancies",
                entity: Some(entity.clone()),
                system: None,
            })
            .await?;
        let mut correction_files = Vec::new();
        let mut event_files = Vec::new();
        let mut reappeared = Vec::new();
        let mut corrections = BTreeMap::new();
        for (c, (_, system, _)) in self.corrections.into_iter().zip(&self.rules.slots) {
            if let Some((sink, events)) = c.sink {
                correction_files.push(
                    sink.finish(FileEntry {
                        kind: "corrections",
                        entity: Some(entity.clone()),
                        system: Some(system.clone()),
                    })
                    .await?,
                );
                event_files.push(events.finish().await?);
            }
            reappeared.extend(c.reappeared);
            if !c.counts.is_empty() {
                corrections.insert(system.clone(), c.counts);
            }
        }
        let mut counts: Vec<Count> = self
            .counts
            .into_iter()
            .map(|((kind, field), count)| Count { kind, field, count })
            .collect();
        counts.sort();
        Ok(EntityResult {
            counts,
            actions: self.actions,
            unrepresentable: self.unrepresentable,
            corrections,
            discrepancy_file,
            correction_files,
            event_files,
            reappeared,
            key_summary_ms,
            diff_ms,
            key_summary_plan,
        })
    }
}

impl Rules {
    /// The discrepancy and correction rows of one batch of the diff query.
    pub(super) fn classify(&self, batch: &RecordBatch) -> Result<Classified> {
        let plan = &self.plan;
        let entity = plan.entity.name.as_str();
        let class = batch
            .column_by_name(DiffColumns::CLASS)
            .expect("the diff query gives the class")
            .as_string::<i32>()
            .clone();
        let keys = key_json(
            plan,
            (0..plan.key_len).map(|i| column(batch, &DiffColumns::key(i))),
        )?;
        let fields: Vec<FieldColumns> = plan
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| FieldColumns::new(batch, i, f.newest.is_some(), &f.common))
            .collect::<Result<_>>()?;
        let insert_columns: Vec<usize> = (plan.key_len..plan.mapped.len()).collect();
        let delete = match plan.entity.deletes {
            DeletePolicy::Hard => Some(Op::Delete),
            DeletePolicy::Soft { .. } => Some(Op::SoftDelete),
            DeletePolicy::Report => None,
        };
        let mut out = Batch {
            rules: self,
            rows: DiscrepancyRows::default(),
            pending: [Vec::new(), Vec::new()],
            tally: Tally {
                missing: 0,
                extra: 0,
                mismatches: vec![0; plan.fields.len()],
                unrepresentable: vec![0; plan.mapped.len()],
            },
            fits: [Side::Replica, Side::Source].map(|to| Fits::new(plan, batch, to)),
        };
        let replica = self.stamp.replica.as_str();
        for row in 0..batch.num_rows() {
            let key = keys.json(row);
            let r = row as u32;
            match class.value(row) {
                c if c == Kind::MissingInReplica.as_str() => {
                    out.tally.missing += 1;
                    // An insert sets every column: withheld when one cannot hold its value.
                    if let Some(j) = out.fits[0].first_lost(row, 0..plan.mapped.len()) {
                        out.tally.unrepresentable[j] += 1;
                        let field = plan.mapped[j].source.as_str();
                        out.push_row(
                            &key,
                            Kind::MissingInReplica,
                            Action::ReportOnly,
                            None,
                            Some(field),
                            Some(Reason::Unrepresentable),
                        );
                        continue;
                    }
                    let id = correction_id(&self.stamp.job, entity, replica, Op::Insert, &key, &[]);
                    out.push_row(
                        &key,
                        Kind::MissingInReplica,
                        Action::CorrectReplica,
                        Some(&id),
                        None,
                        None,
                    );
                    out.pending[0].push(PendingCorrection {
                        row: r,
                        op: Op::Insert,
                        id,
                        changed: insert_columns.clone(),
                    });
                }
                c if c == Kind::ExtraInReplica.as_str() => {
                    let id = delete
                        .map(|op| correction_id(&self.stamp.job, entity, replica, op, &key, &[]));
                    let action = if delete.is_some() {
                        Action::CorrectReplica
                    } else {
                        Action::ReportOnly
                    };
                    out.push_row(
                        &key,
                        Kind::ExtraInReplica,
                        action,
                        id.as_deref(),
                        None,
                        None,
                    );
                    out.tally.extra += 1;
                    if let (Some(op), Some(id)) = (delete, id) {
                        out.pending[0].push(PendingCorrection {
                            row: r,
                            op,
                            id,
                            changed: vec![],
                        });
                    }
                }
                _ => out.mismatches(row, &key, &fields)?,
            }
        }
        let mut corrections = [None, None];
        for (slot, pending) in out.pending.iter().enumerate() {
            if pending.is_empty() {
                continue;
            }
            let (side, _, schema) = &self.slots[slot];
            let rows = build_corrections(
                plan,
                *side,
                schema,
                batch,
                pending,
                self.soft_deleted.as_ref(),
                self.stamp.run_date,
            )?;
            let mut ops = BTreeMap::new();
            for p in pending {
                *ops.entry(p.op).or_default() += 1;
            }
            let events = self.events[slot].render(&rows)?;
            corrections[slot] = Some(SlotCorrections { rows, ops, events });
        }
        Ok(Classified {
            discrepancies: out.rows.finish()?,
            tally: out.tally,
            corrections,
        })
    }
}

/// One diff batch's outputs as they are gathered.
pub(super) struct Batch<'r> {
    rules: &'r Rules,
    rows: DiscrepancyRows,
    /// Per correction slot.
    pending: [Vec<PendingCorrection>; 2],
    tally: Tally,
    /// Per correction slot: where its values to set do not fit.
    fits: [Fits; 2],
}

/// Where the values to set on one side are lost: NULL after the exact cast
/// ([`fit::ExactCast`]) while the value they come from is not.
pub(super) struct Fits {
    /// Per mapped column that needs the exact cast: (index, values to set, values
    /// they come from).
    columns: Vec<(usize, ArrayRef, ArrayRef)>,
}

impl Fits {
    pub(super) fn new(plan: &EntityPlan, batch: &RecordBatch, to: Side) -> Self {
        let columns = (0..plan.mapped.len())
            .filter(|&j| plan.needs_fit(to, j))
            .map(|j| {
                (
                    j,
                    Arc::clone(column(batch, &DiffColumns::to_set(to, j))),
                    Arc::clone(column(batch, &DiffColumns::current(to.other(), j))),
                )
            })
            .collect();
        Fits { columns }
    }

    /// Whether mapped column `j`'s value to set in `row` is lost.
    pub(super) fn lost(&self, row: usize, j: usize) -> bool {
        self.columns
            .iter()
            .any(|(c, set, from)| *c == j && set.is_null(row) && from.is_valid(row))
    }

    /// The first of `columns` whose value to set in `row` is lost.
    pub(super) fn first_lost(&self, row: usize, columns: std::ops::Range<usize>) -> Option<usize> {
        columns.into_iter().find(|&j| self.lost(row, j))
    }
}

impl Batch<'_> {
    /// A discrepancy row for a key on one side only; `field` and `reason` only when its
    /// correction is withheld (the column that cannot hold its value).
    pub(super) fn push_row(
        &mut self,
        key: &str,
        kind: Kind,
        action: Action,
        id: Option<&str>,
        field: Option<&str>,
        reason: Option<Reason>,
    ) {
        let stamp = &self.rules.stamp;
        let entity = &self.rules.plan.entity.name;
        self.rows.push(
            stamp,
            entity,
            Discrepancy {
                field,
                owner: Some(&Owner::Source),
                reason,
                correction_id: id,
                ..Discrepancy::new(key, kind, action)
            },
        );
    }

    /// Field mismatches of one row present on both sides.
    pub(super) fn mismatches(
        &mut self,
        row: usize,
        key: &str,
        fields: &[FieldColumns],
    ) -> Result<()> {
        let rules = self.rules;
        let plan = &rules.plan;
        let entity = plan.entity.name.as_str();
        // (field index, corrected side) of each differing field
        let mut differing: Vec<(usize, Option<Side>)> = Vec::new();
        for (i, f) in plan.fields.iter().enumerate() {
            if fields[i].reason.is_null(row) {
                continue;
            }
            let corrected = match &f.rule.owner {
                Owner::Source => Some(Side::Replica),
                Owner::Replica => Some(Side::Source),
                Owner::None => None,
                Owner::Newest { .. } => {
                    let newer = fields[i]
                        .replica_newer
                        .as_ref()
                        .is_some_and(|a| a.is_valid(row) && a.value(row));
                    Some(if newer { Side::Source } else { Side::Replica })
                }
            };
            differing.push((i, corrected));
        }
        // Fields whose value the corrected side cannot hold: reported, never corrected.
        let lost: Vec<bool> = differing
            .iter()
            .map(|(i, s)| match s {
                Some(Side::Replica) => self.fits[0].lost(row, plan.fields[*i].column),
                Some(Side::Source) => self.fits[1].lost(row, plan.fields[*i].column),
                None => false,
            })
            .collect();
        let mut ids: [Option<String>; 2] = [None, None];
        for (slot, (side, system, _)) in rules.slots.iter().enumerate() {
            let changed: Vec<(usize, &str, Option<&str>, Option<&str>)> = differing
                .iter()
                .zip(&lost)
                .filter(|((_, s), lost)| *s == Some(*side) && !**lost)
                .map(|(d, _)| d)
                .map(|(i, _)| {
                    let m = plan.field_column(&plan.fields[*i]);
                    (
                        *i,
                        m.name(*side),
                        fields[*i].source_text(row),
                        fields[*i].replica_text(row),
                    )
                })
                .collect();
            if changed.is_empty() {
                continue;
            }
            let detail: Vec<(&str, Option<&str>, Option<&str>)> =
                changed.iter().map(|(_, n, s, r)| (*n, *s, *r)).collect();
            let id = correction_id(&rules.stamp.job, entity, system, Op::Update, key, &detail);
            self.pending[slot].push(PendingCorrection {
                row: row as u32,
                op: Op::Update,
                id: id.clone(),
                changed: changed
                    .iter()
                    .map(|(i, ..)| plan.fields[*i].column)
                    .collect(),
            });
            ids[slot] = Some(id);
        }
        for ((i, corrected), lost) in differing.into_iter().zip(lost) {
            let f = &plan.fields[i];
            let name = plan.field_column(f).source.as_str();
            let fc = &fields[i];
            let (action, id, reason) = match corrected {
                _ if lost => {
                    self.tally.unrepresentable[f.column] += 1;
                    (Action::ReportOnly, None, Reason::Unrepresentable)
                }
                Some(Side::Replica) => (Action::CorrectReplica, ids[0].as_deref(), fc.reason(row)?),
                Some(Side::Source) => (Action::CorrectSource, ids[1].as_deref(), fc.reason(row)?),
                None => (Action::ReportOnly, None, fc.reason(row)?),
            };
            self.rows.push(
                &rules.stamp,
                entity,
                Discrepancy {
                    field: Some(name),
                    source_value: fc.source_text(row),
                    replica_value: fc.replica_text(row),
                    owner: Some(&f.rule.owner),
                    reason: Some(reason),
                    delta: fc.delta(row),
                    correction_id: id,
                    ..Discrepancy::new(key, Kind::FieldMismatch, action)
                },
            );
            self.tally.mismatches[i] += 1;
        }
        Ok(())
    }
}

/// The key columns of a batch (`arrays`, in the plan's key order) as canonical JSON.
fn key_json<'b>(plan: &EntityPlan, arrays: impl Iterator<Item = &'b ArrayRef>) -> Result<KeyJson> {
    KeyJson::new(plan.keys().iter().map(|k| k.source.as_str()).zip(arrays))
}
