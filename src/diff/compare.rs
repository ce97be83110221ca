//! The per-field comparison rule as a DataFusion scalar function. Each compared field gets
//! its own instance, holding its rule, so no rule value is ever spliced into SQL text.
//!
//! `recon_cmp_…(source, replica)` returns NULL when the two values are equal under the
//! rule (null-safe: NULL equals NULL), otherwise the reason code of the difference.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use arrow::compute::cast;
use arrow::compute::kernels::cmp::distinct;
use arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type, TimeUnit};
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::job::CompareRule;

pub const NULL_VS_VALUE: &str = "null_vs_value";
pub const VALUE: &str = "value";
pub const CASE_ONLY: &str = "case_only";
pub const WHITESPACE_ONLY: &str = "whitespace_only";
pub const NUMERIC_DELTA: &str = "numeric_delta";

/// A comparison rule bound to one field's common type.
#[derive(Debug)]
pub struct FieldComparator {
    name: String,
    rule: CompareRule,
    signature: Signature,
}

impl PartialEq for FieldComparator {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.rule == other.rule
    }
}
impl Eq for FieldComparator {}
impl Hash for FieldComparator {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl FieldComparator {
    pub fn new(name: impl Into<String>, rule: CompareRule, common: DataType) -> Self {
        FieldComparator {
            name: name.into(),
            rule,
            signature: Signature::exact(vec![common.clone(), common], Volatility::Immutable),
        }
    }

    pub fn into_udf(self) -> ScalarUDF {
        ScalarUDF::new_from_impl(self)
    }

    /// Reason codes for each row of two arrays of the same type; NULL where equal.
    pub fn compare(&self, a: &ArrayRef, b: &ArrayRef) -> DfResult<ArrayRef> {
        let rule = &self.rule;
        let mut out = StringBuilder::with_capacity(a.len(), a.len() * 4);
        match a.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let (a, b) = (Strings::new(a)?, Strings::new(b)?);
                for i in 0..a.len() {
                    out.append_option(compare_text(rule, a.get(i), b.get(i)));
                }
            }
            DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                let a = cast(a, &DataType::Float64)?;
                let b = cast(b, &DataType::Float64)?;
                let (a, b) = (
                    a.as_primitive::<Float64Type>(),
                    b.as_primitive::<Float64Type>(),
                );
                for i in 0..a.len() {
                    let r = match (a.is_valid(i), b.is_valid(i)) {
                        (false, false) => None,
                        (true, true) => {
                            (!floats_equal(rule, a.value(i), b.value(i))).then_some(NUMERIC_DELTA)
                        }
                        _ => Some(NULL_VS_VALUE),
                    };
                    out.append_option(r);
                }
            }
            t if t.is_integer() || matches!(t, DataType::Decimal128(..)) => {
                let (a, scale) = as_decimal(a)?;
                let (b, _) = as_decimal(b)?;
                let (a, b) = (
                    a.as_primitive::<Decimal128Type>(),
                    b.as_primitive::<Decimal128Type>(),
                );
                for i in 0..a.len() {
                    let r = match (a.is_valid(i), b.is_valid(i)) {
                        (false, false) => None,
                        (true, true) => (!decimals_equal(rule, a.value(i), b.value(i), scale))
                            .then_some(NUMERIC_DELTA),
                        _ => Some(NULL_VS_VALUE),
                    };
                    out.append_option(r);
                }
            }
            DataType::Timestamp(unit, _) if rule.precision.is_some() => {
                let factor = truncation_factor(*unit, rule.precision.expect("checked"));
                let a = cast(a, &DataType::Int64)?;
                let b = cast(b, &DataType::Int64)?;
                let (a, b) = (a.as_primitive::<Int64Type>(), b.as_primitive::<Int64Type>());
                for i in 0..a.len() {
                    let r = match (a.is_valid(i), b.is_valid(i)) {
                        (false, false) => None,
                        (true, true) => (a.value(i).div_euclid(factor)
                            != b.value(i).div_euclid(factor))
                        .then_some(VALUE),
                        _ => Some(NULL_VS_VALUE),
                    };
                    out.append_option(r);
                }
            }
            _ => {
                let differs = distinct(a, b)?;
                for i in 0..a.len() {
                    let r = if differs.value(i) {
                        Some(if a.is_null(i) != b.is_null(i) {
                            NULL_VS_VALUE
                        } else {
                            VALUE
                        })
                    } else {
                        None
                    };
                    out.append_option(r);
                }
            }
        }
        Ok(Arc::new(out.finish()))
    }
}

impl ScalarUDFImpl for FieldComparator {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [a, b] = arrays.as_slice() else {
            return exec_err!("{} takes two arguments", self.name);
        };
        Ok(ColumnarValue::Array(self.compare(a, b)?))
    }
}

/// Integers and decimals as Decimal128 of one scale, so they compare exactly.
fn as_decimal(a: &ArrayRef) -> DfResult<(ArrayRef, u32)> {
    match a.data_type() {
        DataType::Decimal128(_, s) => Ok((Arc::clone(a), (*s).max(0) as u32)),
        _ => Ok((cast(a, &DataType::Decimal128(38, 0))?, 0)),
    }
}

pub(super) fn truncation_factor(unit: TimeUnit, precision: TimeUnit) -> i64 {
    fn per_second(u: TimeUnit) -> i64 {
        match u {
            TimeUnit::Second => 1,
            TimeUnit::Millisecond => 1_000,
            TimeUnit::Microsecond => 1_000_000,
            TimeUnit::Nanosecond => 1_000_000_000,
        }
    }
    (per_second(unit) / per_second(precision)).max(1)
}

/// Float equality: NaN equals NaN, -0.0 equals 0.0, tolerances inclusive. The boundary
/// allows a few ulps of the operands so that `1.1` vs `1.0` is within `abs_tol = 0.1`.
pub fn floats_equal(rule: &CompareRule, a: f64, b: f64) -> bool {
    if a == b || (a.is_nan() && b.is_nan()) {
        return true;
    }
    if !rule.is_numeric() {
        return false;
    }
    let diff = (a - b).abs();
    let magnitude = a.abs().max(b.abs());
    let slack = 4.0 * f64::EPSILON * magnitude;
    let abs_ok = rule
        .abs_tol
        .is_some_and(|t| diff <= t.value + slack.max(4.0 * f64::EPSILON * t.value));
    let rel_ok = rule.rel_tol.is_some_and(|r| diff <= r * magnitude + slack);
    abs_ok || rel_ok
}

/// Exact decimal equality with inclusive tolerances; `a` and `b` share `scale`.
pub fn decimals_equal(rule: &CompareRule, a: i128, b: i128, scale: u32) -> bool {
    if a == b {
        return true;
    }
    let Some(diff) = a.checked_sub(b).map(i128::unsigned_abs) else {
        return false;
    };
    let abs_ok = rule.abs_tol.is_some_and(|t| {
        // diff × 10^-scale <= m × 10^-t  ⇔  diff × 10^(k-scale) <= m × 10^(k-t)
        let k = scale.max(t.scale);
        let lhs = 10u128
            .checked_pow(k - scale)
            .and_then(|p| diff.checked_mul(p));
        let rhs = 10u128
            .checked_pow(k - t.scale)
            .and_then(|p| (t.mantissa as u128).checked_mul(p));
        match (lhs, rhs) {
            (Some(l), Some(r)) => l <= r,
            (None, Some(_)) => false,
            (_, None) => true,
        }
    });
    let rel_ok = rule.rel_tol.is_some_and(|r| {
        let magnitude = a.unsigned_abs().max(b.unsigned_abs()) as f64;
        (diff as f64) <= r * magnitude * (1.0 + 4.0 * f64::EPSILON)
    });
    abs_ok || rel_ok
}

/// Text comparison under the rule; the reason says what kind of difference remains.
pub fn compare_text(rule: &CompareRule, a: Option<&str>, b: Option<&str>) -> Option<&'static str> {
    if a == b {
        return None;
    }
    let (na, nb) = (normalize(rule, a), normalize(rule, b));
    if na == nb {
        return None;
    }
    Some(match (a, b) {
        (Some(a), Some(b)) if !(na.is_none() || nb.is_none()) => {
            if a.to_lowercase() == b.to_lowercase() {
                CASE_ONLY
            } else if a.trim() == b.trim() {
                WHITESPACE_ONLY
            } else {
                VALUE
            }
        }
        _ => NULL_VS_VALUE,
    })
}

/// Applies the text rule: trim, then empty as NULL, then lower case.
pub(super) fn normalize<'s>(rule: &CompareRule, x: Option<&'s str>) -> Option<Cow<'s, str>> {
    let x = x.map(|s| if rule.trim { s.trim() } else { s });
    let x = x.filter(|s| !(rule.null_equals_empty && s.is_empty()));
    x.map(|s| {
        if rule.case_insensitive {
            Cow::Owned(s.to_lowercase())
        } else {
            Cow::Borrowed(s)
        }
    })
}

/// Read access to any of Arrow's three string layouts.
pub(super) enum Strings<'a> {
    Utf8(&'a arrow::array::StringArray),
    Large(&'a arrow::array::LargeStringArray),
    View(&'a arrow::array::StringViewArray),
}

impl<'a> Strings<'a> {
    pub(super) fn new(a: &'a ArrayRef) -> DfResult<Self> {
        Ok(match a.data_type() {
            DataType::Utf8 => Strings::Utf8(a.as_string::<i32>()),
            DataType::LargeUtf8 => Strings::Large(a.as_string::<i64>()),
            DataType::Utf8View => Strings::View(a.as_string_view()),
            other => return exec_err!("expected a string array, got {other}"),
        })
    }
    pub(super) fn len(&self) -> usize {
        match self {
            Strings::Utf8(a) => a.len(),
            Strings::Large(a) => a.len(),
            Strings::View(a) => a.len(),
        }
    }
    pub(super) fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Strings::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Strings::Large(a) => a.is_valid(i).then(|| a.value(i)),
            Strings::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Tolerance;

    fn rule() -> CompareRule {
        CompareRule::default()
    }

    #[test]
    fn floats_nan_and_signed_zero() {
        assert!(floats_equal(&rule(), f64::NAN, f64::NAN));
        assert!(floats_equal(&rule(), -0.0, 0.0));
        assert!(!floats_equal(&rule(), 1.0, 1.0000001));
    }

    #[test]
    fn tolerance_boundaries_are_inclusive() {
        let mut r = rule();
        r.abs_tol = Tolerance::from_f64(0.1);
        assert!(floats_equal(&r, 1.1, 1.0));
        assert!(!floats_equal(&r, 1.2, 1.0));
        r.abs_tol = Tolerance::from_f64(0.01);
        // 10.01 vs 10.00 at scale 2: exactly at the boundary.
        assert!(decimals_equal(&r, 1001, 1000, 2));
        assert!(!decimals_equal(&r, 1002, 1000, 2));
        // scale 4 values, tolerance 0.01 = 100 at scale 4
        assert!(decimals_equal(&r, 100_100, 100_000, 4));
        assert!(!decimals_equal(&r, 100_101, 100_000, 4));
        let mut r = rule();
        r.rel_tol = Some(0.01);
        assert!(decimals_equal(&r, 101, 100, 0));
        assert!(!decimals_equal(&r, 103, 100, 0));
        assert!(floats_equal(&r, 101.0, 100.0));
    }

    #[test]
    fn text_reasons() {
        let r = rule();
        assert_eq!(compare_text(&r, Some("a"), Some("a")), None);
        assert_eq!(compare_text(&r, Some("A"), Some("a")), Some(CASE_ONLY));
        assert_eq!(
            compare_text(&r, Some("a "), Some("a")),
            Some(WHITESPACE_ONLY)
        );
        assert_eq!(compare_text(&r, None, Some("a")), Some(NULL_VS_VALUE));
        assert_eq!(compare_text(&r, None, Some("")), Some(NULL_VS_VALUE));
        assert_eq!(compare_text(&r, Some("x"), Some("y")), Some(VALUE));
        let mut r = rule();
        r.case_insensitive = true;
        assert_eq!(compare_text(&r, Some("ÄB"), Some("äb")), None);
        r.null_equals_empty = true;
        assert_eq!(compare_text(&r, None, Some("")), None);
        r.trim = true;
        assert_eq!(compare_text(&r, None, Some("  ")), None);
        assert_eq!(compare_text(&r, Some(" X"), Some("x ")), None);
    }
}
