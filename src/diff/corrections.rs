//! The correction files' rows: one system's schema ([`correction_schema`]) and the
//! rows of one diff batch's corrections ([`build_corrections`]): the values to set,
//! the fields changed and the values the snapshot saw (`expected`, for the apply
//! stage's compare-and-set).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, ListBuilder, RecordBatch, StringArray, StringBuilder, StructArray,
    UInt32Array,
};
use arrow::compute::kernels::zip::zip;
use arrow::compute::{nullif, take};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use chrono::NaiveDate;
use datafusion::common::ScalarValue;

use super::columns::{DiffColumns, column};
use super::plan::{EntityPlan, Side, SoftColumn, SoftMarker};
use super::types::value_type;
use crate::error::{Error, Result};
use crate::write::vocabulary::Op;

/// A correction to be emitted for one row of a diff batch.
pub(super) struct PendingCorrection {
    pub(super) row: u32,
    pub(super) op: Op,
    pub(super) id: String,
    /// Indices into `plan.mapped` of the columns set (updates).
    pub(super) changed: Vec<usize>,
}

/// The schema of one system's correction files: id, op, changed fields, the entity's
/// mapped columns in that system's names and types (values to set), and `expected`, a
/// struct of the same columns holding the values the row had in the snapshot.
pub fn correction_schema(plan: &EntityPlan, side: Side) -> SchemaRef {
    let mut payload: Vec<Field> = plan
        .mapped
        .iter()
        .map(|m| Field::new(m.name(side), m.data_type(side).clone(), true))
        .collect();
    if let (Side::Replica, Some(soft)) = (side, plan.extra_soft()) {
        payload.push(Field::new(&soft.name, soft.data_type(), true));
    }
    let mut fields = vec![
        Field::new("correction_id", DataType::Utf8, false),
        Field::new("op", DataType::Utf8, false),
        Field::new(
            "changed_fields",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
    ];
    fields.extend(payload.iter().cloned());
    fields.push(Field::new(
        "expected",
        DataType::Struct(Fields::from(payload)),
        true,
    ));
    Arc::new(Schema::new(fields))
}

/// The value a soft-deleted (or, with `deleted = false`, a live) row has in `s`.
/// Deterministic: a timestamp column gets midnight UTC of the run date.
pub(super) fn soft_value(
    s: &SoftColumn,
    run_date: NaiveDate,
    deleted: bool,
) -> Result<ScalarValue> {
    let t = s.data_type();
    let value = match (&s.marker, deleted) {
        (SoftMarker::Bool(v), true) => ScalarValue::Boolean(Some(*v)),
        (SoftMarker::Bool(v), false) => ScalarValue::Boolean(Some(!*v)),
        (SoftMarker::NotNull(_), false) => {
            return ScalarValue::try_from(&t)
                .map_err(|e| Error::bug(format!("the live value of `{}`", s.name), e));
        }
        (SoftMarker::NotNull(_), true) => {
            let midnight = run_date
                .and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp();
            // Midnight UTC in the column's own zone, so that the cast keeps the instant.
            let zone = match value_type(&t) {
                DataType::Timestamp(_, zone) => zone.clone(),
                _ => None,
            };
            let seconds = ScalarValue::TimestampSecond(Some(midnight), zone);
            seconds
                .cast_to(&t)
                .map_err(|e| Error::Internal(format!("soft-delete value for `{}`: {e}", s.name)))?
        }
    };
    Ok(value)
}

pub(super) fn build_corrections(
    plan: &EntityPlan,
    side: Side,
    schema: &SchemaRef,
    batch: &RecordBatch,
    pending: &[PendingCorrection],
    soft_deleted: Option<&ScalarValue>,
    run_date: NaiveDate,
) -> Result<RecordBatch> {
    let indices = UInt32Array::from_iter_values(pending.iter().map(|p| p.row));
    let internal = |e: arrow::error::ArrowError| {
        Error::Internal(format!(
            "building corrections of `{}`: {e}",
            plan.entity.name
        ))
    };
    let soft_rows = BooleanArray::from_iter(pending.iter().map(|p| Some(p.op == Op::SoftDelete)));
    let soft_name = plan
        .replica_soft
        .as_ref()
        .filter(|_| side == Side::Replica)
        .map(|s| s.name.as_str());

    let mut values: Vec<ArrayRef> = Vec::with_capacity(plan.mapped.len() + 1);
    let mut expected: Vec<ArrayRef> = Vec::with_capacity(plan.mapped.len() + 1);
    for (j, m) in plan.mapped.iter().enumerate() {
        let set = take(
            column(batch, &DiffColumns::to_set(side, j)).as_ref(),
            &indices,
            None,
        )
        .map_err(internal)?;
        let cur = take(
            column(batch, &DiffColumns::current(side, j)).as_ref(),
            &indices,
            None,
        )
        .map_err(internal)?;
        let drop = BooleanArray::from_iter(pending.iter().map(|p| {
            let keep =
                m.is_key || p.op == Op::Insert || (p.op == Op::Update && p.changed.contains(&j));
            Some(!keep)
        }));
        let mut value = nullif(set.as_ref(), &drop).map_err(internal)?;
        if soft_name == Some(m.name(side))
            && let Some(v) = soft_deleted
        {
            let marker = v
                .to_scalar()
                .map_err(|e| Error::bug("the soft-delete marker", e))?;
            value = zip(&soft_rows, &marker, &value).map_err(internal)?;
        }
        values.push(value);
        expected.push(cur);
    }
    if let (Side::Replica, Some(soft)) = (side, plan.extra_soft()) {
        let deleted = soft_value(soft, run_date, true)?;
        let live = soft_value(soft, run_date, false)?;
        let none = ScalarValue::try_from(&soft.data_type())
            .map_err(|e| Error::bug(format!("a NULL of `{}`", soft.name), e))?;
        let scalars: Vec<ScalarValue> = pending
            .iter()
            .map(|p| match p.op {
                Op::SoftDelete => deleted.clone(),
                Op::Insert => live.clone(),
                _ => none.clone(),
            })
            .collect();
        let array = ScalarValue::iter_to_array(scalars)
            .map_err(|e| Error::bug(format!("the values of `{}`", soft.name), e))?;
        values.push(array);
        let j = plan.mapped.len();
        let cur = take(
            column(batch, &DiffColumns::current(Side::Replica, j)).as_ref(),
            &indices,
            None,
        )
        .map_err(internal)?;
        expected.push(cur);
    }

    let payload_fields: Fields = match schema
        .field_with_name("expected")
        .expect("expected")
        .data_type()
    {
        DataType::Struct(f) => f.clone(),
        _ => unreachable!("expected is a struct"),
    };
    let not_insert = arrow::buffer::NullBuffer::from(
        pending
            .iter()
            .map(|p| p.op != Op::Insert)
            .collect::<Vec<_>>(),
    );
    let expected =
        StructArray::try_new(payload_fields, expected, Some(not_insert)).map_err(internal)?;

    let ids = StringArray::from_iter_values(pending.iter().map(|p| p.id.as_str()));
    let ops = StringArray::from_iter_values(pending.iter().map(|p| p.op.as_str()));
    let mut changed = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
        "item",
        DataType::Utf8,
        true,
    )));
    for p in pending {
        match p.op {
            Op::SoftDelete => {
                if let Some(s) = &plan.replica_soft {
                    changed.values().append_value(&s.name);
                }
            }
            op => {
                for j in &p.changed {
                    changed.values().append_value(plan.mapped[*j].name(side));
                }
                // An insert also sets the replica's own soft-delete column, to live.
                if let (Op::Insert, Side::Replica, Some(soft)) = (op, side, plan.extra_soft()) {
                    changed.values().append_value(&soft.name);
                }
            }
        }
        changed.append(true);
    }
    let changed = changed.finish();

    let mut columns: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(ops), Arc::new(changed)];
    columns.extend(values);
    columns.push(Arc::new(expected));
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(internal)
}
