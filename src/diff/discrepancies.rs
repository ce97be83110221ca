//! The discrepancy files' rows: each compared field's diff columns read once per batch
//! ([`FieldColumns`]: reasons, both values as canonical text, numeric deltas) and the
//! builders of the rows themselves ([`DiscrepancyRows`]).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Builder, Float64Builder, RecordBatch,
    StringArray, StringBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};

use super::RunStamp;
use super::columns::{DiffColumns, column};
use super::plan::Side;
use super::types::is_numeric;
use crate::error::{Error, Result};
use crate::job::Owner;
use crate::write::discrepancy_schema;
use crate::write::encode::{canonical_text, days_since_epoch};
use crate::write::vocabulary::{Action, Kind, Reason};

/// The diff output columns of one compared field.
pub(super) struct FieldColumns {
    pub(super) reason: StringArray,
    /// Row → index into the texts, for the rows where the field differs (a reason);
    /// `u32::MAX` elsewhere.
    pub(super) at: Vec<u32>,
    /// The values as text, of the rows where the field differs only: rendering every
    /// row's would cost more than the rest of the classification.
    pub(super) source_text: StringArray,
    pub(super) replica_text: StringArray,
    /// replica − source, for numbers (NULL where either is NULL).
    pub(super) delta: Option<ArrayRef>,
    pub(super) replica_newer: Option<BooleanArray>,
}

/// replica − source of integers or decimals, exact until the one rounding to f64.
pub(super) fn exact_deltas(sc: &ArrayRef, rc: &ArrayRef, common: &DataType) -> Result<ArrayRef> {
    let scale = match common {
        DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => (*s).max(0),
        _ => 0,
    };
    let wide = DataType::Decimal256(76, scale);
    let internal = |e| Error::bug("the exact delta of a numeric field", e);
    let (s, r) = (
        cast(sc, &wide).map_err(internal)?,
        cast(rc, &wide).map_err(internal)?,
    );
    let (s, r) = (
        s.as_primitive::<arrow::datatypes::Decimal256Type>(),
        r.as_primitive::<arrow::datatypes::Decimal256Type>(),
    );
    // |values| < 10^76 < 2^253: the difference fits; the decimal text parses to the
    // nearest f64.
    let out: arrow::array::Float64Array = (0..s.len())
        .map(|row| {
            (s.is_valid(row) && r.is_valid(row)).then(|| {
                let d = r.value(row).wrapping_sub(s.value(row));
                format!("{d}e-{scale}").parse::<f64>().unwrap_or(f64::NAN)
            })
        })
        .collect();
    Ok(Arc::new(out))
}

impl FieldColumns {
    /// `common`: the type both values are compared in (the type of `sc{i}`, `rc{i}`).
    pub(super) fn new(
        batch: &RecordBatch,
        i: usize,
        newest: bool,
        common: &DataType,
    ) -> Result<Self> {
        let sc = column(batch, &DiffColumns::compared(Side::Source, i));
        let rc = column(batch, &DiffColumns::compared(Side::Replica, i));
        let internal = |e| Error::bug("the numeric delta of a field", e);
        let delta = if common.is_floating() {
            let (s, r) = (
                cast(sc, &DataType::Float64).map_err(internal)?,
                cast(rc, &DataType::Float64).map_err(internal)?,
            );
            let (s, r) = (
                s.as_primitive::<Float64Type>(),
                r.as_primitive::<Float64Type>(),
            );
            Some(arrow::compute::kernels::numeric::sub(r, s).map_err(internal)?)
        } else if is_numeric(common) {
            Some(exact_deltas(sc, rc, common)?)
        } else {
            None
        };
        let reason = column(batch, &DiffColumns::reason(i))
            .as_string::<i32>()
            .clone();
        let differs = arrow::compute::is_not_null(&reason)
            .map_err(|e| Error::bug("the rows where a field differs", e))?;
        let mut at = vec![u32::MAX; reason.len()];
        for (n, row) in differs.values().set_indices().enumerate() {
            at[row] = n as u32;
        }
        let text = |a: &ArrayRef| {
            let a = arrow::compute::filter(a, &differs)
                .map_err(|e| Error::bug("the values of a differing field", e))?;
            canonical_text(&a)
        };
        Ok(FieldColumns {
            at,
            source_text: text(sc)?,
            replica_text: text(rc)?,
            reason,
            delta,
            replica_newer: newest.then(|| {
                column(batch, &DiffColumns::replica_newer(i))
                    .as_boolean()
                    .clone()
            }),
        })
    }
    pub(super) fn text(texts: &StringArray, at: u32) -> Option<&str> {
        let at = at as usize;
        (at < texts.len() && texts.is_valid(at)).then(|| texts.value(at))
    }
    pub(super) fn source_text(&self, row: usize) -> Option<&str> {
        Self::text(&self.source_text, self.at[row])
    }
    pub(super) fn replica_text(&self, row: usize) -> Option<&str> {
        Self::text(&self.replica_text, self.at[row])
    }
    /// Why the field differs in `row` (see [`super::compare`]); the row must differ.
    pub(super) fn reason(&self, row: usize) -> Result<Reason> {
        self.reason
            .value(row)
            .parse()
            .map_err(|e: String| Error::bug("the diff query's reason", e))
    }

    /// replica − source, when both are numbers.
    pub(super) fn delta(&self, row: usize) -> Option<f64> {
        let d = self.delta.as_ref()?.as_primitive::<Float64Type>();
        d.is_valid(row).then(|| d.value(row))
    }
}

/// One discrepancy row, as the classifier finds it (the run's stamp and the entity
/// are the builder's).
pub(super) struct Discrepancy<'a> {
    pub key: &'a str,
    pub kind: Kind,
    pub field: Option<&'a str>,
    pub source_value: Option<&'a str>,
    pub replica_value: Option<&'a str>,
    pub owner: Option<&'a Owner>,
    pub action: Action,
    pub reason: Option<Reason>,
    pub delta: Option<f64>,
    pub correction_id: Option<&'a str>,
}

impl<'a> Discrepancy<'a> {
    /// A row of `kind` for `key` with nothing else filled in yet.
    pub fn new(key: &'a str, kind: Kind, action: Action) -> Self {
        Discrepancy {
            key,
            kind,
            field: None,
            source_value: None,
            replica_value: None,
            owner: None,
            action,
            reason: None,
            delta: None,
            correction_id: None,
        }
    }
}

/// Column builders for discrepancy rows.
#[derive(Default)]
pub(super) struct DiscrepancyRows {
    run_id: StringBuilder,
    run_date: Date32Builder,
    job: StringBuilder,
    entity: StringBuilder,
    key: StringBuilder,
    kind: StringBuilder,
    field: StringBuilder,
    source_value: StringBuilder,
    replica_value: StringBuilder,
    owner: StringBuilder,
    action: StringBuilder,
    reason: StringBuilder,
    delta: Float64Builder,
    correction_id: StringBuilder,
    len: usize,
}

/// Adds the discrepancy rows of `batch` (as [`DiscrepancyRows::finish`] makes them) to
/// `into`, per action: what the run summary reports as correctable and report-only.
pub(super) fn count_actions(
    batch: &RecordBatch,
    into: &mut std::collections::BTreeMap<Action, u64>,
) -> Result<()> {
    let actions = batch
        .column_by_name("action")
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| Error::Internal("a discrepancy batch without its action column".into()))?;
    // One pass over the column, each row's word matched against the three.
    let mut counts = [0u64; Action::ALL.len()];
    for word in actions.iter().flatten() {
        if let Some(i) = Action::ALL.iter().position(|a| a.as_str() == word) {
            counts[i] += 1;
        }
    }
    for (action, n) in Action::ALL.iter().zip(counts) {
        if n > 0 {
            *into.entry(*action).or_default() += n;
        }
    }
    Ok(())
}

impl DiscrepancyRows {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn push(&mut self, stamp: &RunStamp, entity: &str, d: Discrepancy<'_>) {
        self.run_id.append_value(&stamp.run_id);
        self.run_date.append_value(days_since_epoch(stamp.run_date));
        self.job.append_value(&stamp.job);
        self.entity.append_value(entity);
        self.key.append_value(d.key);
        self.kind.append_value(d.kind.as_str());
        self.field.append_option(d.field);
        self.source_value.append_option(d.source_value);
        self.replica_value.append_option(d.replica_value);
        self.owner.append_option(d.owner.map(Owner::as_str));
        self.action.append_value(d.action.as_str());
        self.reason.append_option(d.reason.map(Reason::as_str));
        self.delta.append_option(d.delta);
        self.correction_id.append_option(d.correction_id);
        self.len += 1;
    }

    pub(super) fn finish(&mut self) -> Result<RecordBatch> {
        self.len = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.run_id.finish()),
            Arc::new(self.run_date.finish()),
            Arc::new(self.job.finish()),
            Arc::new(self.entity.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.field.finish()),
            Arc::new(self.source_value.finish()),
            Arc::new(self.replica_value.finish()),
            Arc::new(self.owner.finish()),
            Arc::new(self.action.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.delta.finish()),
            Arc::new(self.correction_id.finish()),
        ];
        RecordBatch::try_new(discrepancy_schema(), columns)
            .map_err(|e| Error::bug("a batch of discrepancy rows", e))
    }
}
