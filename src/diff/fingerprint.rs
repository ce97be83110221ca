//! `recon_fingerprint(c0, c1, …)`: one 64-bit hash per row of an entity's compared
//! fields, each normalised by its rule first, so that two rows whose fields are equal
//! under their rules get the same fingerprint.
//!
//! The diff joins only keys and fingerprints of the two sides, and compares field by
//! field only the keys whose fingerprints differ. The normalisation follows the
//! comparators in [`super::compare`] wherever equality is an identity on a normal form:
//! text rules (trim, empty as NULL, case), floats (NaN equals NaN, -0.0 equals 0.0) and
//! timestamp precision (truncation). Tolerances have no normal form: values within a
//! tolerance of each other may get different fingerprints, and the comparator then
//! finds them equal in the second step. That costs time, never correctness.
//!
//! Which fields are NULL is hashed first, as a bit mask, so that a NULL never hashes
//! like a value. A real difference is missed only if two different rows' 64-bit
//! fingerprints collide: about one chance in 1.8 × 10^19 per differing row.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, StringArray, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::Result as DfResult;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::compare::{Strings, truncation_factor};
use crate::job::CompareRule;

/// The name the fingerprint function is registered under.
pub const NAME: &str = "recon_fingerprint";

/// The fingerprint of an entity's compared fields, bound to their rules and common types.
#[derive(Debug)]
pub struct Fingerprint {
    rules: Vec<CompareRule>,
    signature: Signature,
}

impl PartialEq for Fingerprint {
    fn eq(&self, other: &Self) -> bool {
        self.rules == other.rules && self.signature == other.signature
    }
}
impl Eq for Fingerprint {}
impl Hash for Fingerprint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.rules.len().hash(state);
    }
}

impl Fingerprint {
    /// `fields`: each compared field's rule and common type, in argument order.
    pub fn new(fields: Vec<(CompareRule, DataType)>) -> Self {
        let types = fields.iter().map(|(_, t)| t.clone()).collect();
        Fingerprint {
            rules: fields.into_iter().map(|(r, _)| r).collect(),
            signature: Signature::exact(types, Volatility::Immutable),
        }
    }

    pub fn into_udf(self) -> ScalarUDF {
        ScalarUDF::new_from_impl(self)
    }

    /// The fingerprints of `rows` rows of the given field arrays.
    pub fn hash(&self, arrays: &[ArrayRef], rows: usize) -> DfResult<UInt64Array> {
        let normal = arrays
            .iter()
            .zip(&self.rules)
            .map(|(a, rule)| normalise(a, rule))
            .collect::<DfResult<Vec<_>>>()?;
        // Where the NULLs are, 64 fields per mask column.
        let mut hashed: Vec<ArrayRef> = Vec::with_capacity(normal.len() + 1);
        for chunk in normal.chunks(64) {
            // One pass over each nullable field's validity bitmap, not a check per row
            // and field.
            let mut masks = vec![0u64; rows];
            for (bit, a) in chunk.iter().enumerate() {
                if let Some(nulls) = a.logical_nulls().filter(|n| n.null_count() > 0) {
                    for (m, valid) in masks.iter_mut().zip(nulls.iter()) {
                        *m |= u64::from(!valid) << bit;
                    }
                }
            }
            hashed.push(Arc::new(UInt64Array::from(masks)));
        }
        // DataFusion folds a primitive column into the row's hash in order (the hash so
        // far seeds the next), but adds the hash of a boolean, text or binary column, so
        // that two such columns with swapped values (a = "x", b = "y" against a = "y",
        // b = "x") would hash alike and the difference go unseen. Such a column is
        // hashed on its own first, and its hashes are folded in order like a number's.
        let state = RandomState::default();
        for a in normal {
            if a.data_type().is_primitive() {
                hashed.push(a);
            } else {
                let mut own = vec![0u64; rows];
                create_hashes(std::slice::from_ref(&a), &state, &mut own)?;
                hashed.push(Arc::new(UInt64Array::from(own)));
            }
        }
        let mut out = vec![0u64; rows];
        create_hashes(&hashed, &state, &mut out)?;
        Ok(UInt64Array::from(out))
    }
}

/// One field's values in the normal form of its rule (same array when already normal).
fn normalise(a: &ArrayRef, rule: &CompareRule) -> DfResult<ArrayRef> {
    Ok(match a.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View if rule.is_textual() => {
            let s = Strings::new(a)?;
            let out: StringArray = (0..s.len())
                .map(|i| super::compare::normalize(rule, s.get(i)).map(Cow::into_owned))
                .collect();
            Arc::new(out)
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => normal_floats(a)?,
        DataType::Timestamp(unit, _) if rule.precision.is_some() => {
            let factor = truncation_factor(*unit, rule.precision.expect("checked"));
            let t = cast(a, &DataType::Int64)?;
            let t: Int64Array = t
                .as_primitive::<Int64Type>()
                .unary(|v| v.div_euclid(factor));
            Arc::new(t)
        }
        _ => Arc::clone(a),
    })
}

/// Floats in their normal form, as Float64: every NaN one NaN, -0.0 as 0.0, so that
/// values equal under the rules are equal bit for bit (hashing, grouping and joining
/// compare floats by their bits).
pub fn normal_floats(a: &ArrayRef) -> DfResult<ArrayRef> {
    let f = cast(a, &DataType::Float64)?;
    let f: Float64Array = f.as_primitive::<Float64Type>().unary(|v| {
        if v == 0.0 {
            0.0
        } else if v.is_nan() {
            f64::NAN
        } else {
            v
        }
    });
    Ok(Arc::new(f))
}

/// The name of [`normal_float_key`].
pub const NORMAL_FLOAT_KEY: &str = "recon_normal_float_key";

/// `recon_normal_float_key(k)`: a Float64 key column in normal form ([`normal_floats`]),
/// so that a NaN key matches a NaN key and -0.0 matches 0.0 on every plan: the merge,
/// the join and the aggregation alike.
pub fn normal_float_key() -> ScalarUDF {
    super::udf::ArrayFunction::udf(
        NORMAL_FLOAT_KEY,
        Signature::exact(vec![DataType::Float64], Volatility::Immutable),
        DataType::Float64,
        normal_floats,
    )
}

impl ScalarUDFImpl for Fingerprint {
    fn name(&self) -> &str {
        NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::UInt64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = super::udf::arg_arrays(&args)?;
        Ok(ColumnarValue::Array(Arc::new(self.hash(&arrays, rows)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};

    fn text_rule() -> CompareRule {
        CompareRule {
            case_insensitive: true,
            trim: true,
            null_equals_empty: true,
            ..CompareRule::default()
        }
    }

    #[test]
    fn equal_under_the_rule_means_equal_fingerprint() {
        let f = Fingerprint::new(vec![
            (text_rule(), DataType::Utf8),
            (CompareRule::default(), DataType::Float64),
        ]);
        let a: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some(" Ann "), Some(""), Some("x")])),
            Arc::new(Float64Array::from(vec![Some(-0.0), Some(f64::NAN), None])),
        ];
        let b: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some("ann"), None, Some("x")])),
            Arc::new(Float64Array::from(vec![
                Some(0.0),
                Some(-f64::NAN),
                Some(1.0),
            ])),
        ];
        let (ha, hb) = (f.hash(&a, 3).unwrap(), f.hash(&b, 3).unwrap());
        assert_eq!(ha.value(0), hb.value(0));
        assert_eq!(ha.value(1), hb.value(1));
        assert_ne!(ha.value(2), hb.value(2), "NULL vs a value must differ");
    }

    #[test]
    fn a_null_moving_between_fields_changes_the_fingerprint() {
        let f = Fingerprint::new(vec![
            (CompareRule::default(), DataType::Utf8),
            (CompareRule::default(), DataType::Utf8),
        ]);
        let a: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some("v"), None])),
            Arc::new(StringArray::from(vec![None, Some("v")])),
        ];
        let h = f.hash(&a, 2).unwrap();
        assert_ne!(h.value(0), h.value(1));
    }
}
