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
use arrow::datatypes::{DataType, Decimal256Type, Float64Type, Int64Type, TimeUnit, i256};
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::job::CompareRule;
use crate::write::vocabulary::Reason;

// The reasons this function returns, as the diff query's rows carry them.
const NULL_VS_VALUE: &str = Reason::NullVsValue.as_str();
const VALUE: &str = Reason::Value.as_str();
const CASE_ONLY: &str = Reason::CaseOnly.as_str();
const WHITESPACE_ONLY: &str = Reason::WhitespaceOnly.as_str();
const NUMERIC_DELTA: &str = Reason::NumericDelta.as_str();

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
            t if is_exact_numeric(t) => {
                let scale = match t {
                    DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => (*s).max(0) as u32,
                    _ => 0,
                };
                let wide = DataType::Decimal256(76, scale as i8);
                let (a, b) = (cast(a, &wide)?, cast(b, &wide)?);
                let (a, b) = (
                    a.as_primitive::<Decimal256Type>(),
                    b.as_primitive::<Decimal256Type>(),
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
        let arrays = super::udf::arg_arrays(&args)?;
        let [a, b] = arrays.as_slice() else {
            return exec_err!("{} takes two arguments", self.name);
        };
        Ok(ColumnarValue::Array(self.compare(a, b)?))
    }
}

/// Integers and decimals: compared in exact decimal arithmetic.
fn is_exact_numeric(t: &DataType) -> bool {
    t.is_integer() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))
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

/// Float equality under the rule, in f64 arithmetic as written: equal when exactly
/// equal (NaN equals NaN, -0.0 equals 0.0, an infinity equals itself); otherwise only
/// when both are finite and |a − b| ≤ abs_tol or |a − b| ≤ rel_tol · max(|a|, |b|).
/// No slack: `1.1 − 1.0` is `0.10000000000000009` in f64, outside `abs_tol = 0.1`.
pub fn floats_equal(rule: &CompareRule, a: f64, b: f64) -> bool {
    if a == b || (a.is_nan() && b.is_nan()) {
        return true;
    }
    if !rule.is_numeric() || !a.is_finite() || !b.is_finite() {
        return false;
    }
    let diff = (a - b).abs();
    let abs_ok = rule.abs_tol.is_some_and(|t| diff <= t.value);
    let rel_ok = rule
        .rel_tol
        .is_some_and(|r| diff <= r.value * a.abs().max(b.abs()));
    abs_ok || rel_ok
}

/// Exact decimal equality with inclusive tolerances taken from their decimal text;
/// `a` and `b` are mantissas at `scale`. Every product is formed in 512 bits, so no
/// value of a Decimal256 (or of any integer type) overflows.
pub fn decimals_equal(rule: &CompareRule, a: i256, b: i256, scale: u32) -> bool {
    if a == b {
        return true;
    }
    // |a|, |b| < 10^76 < 2^253, so the difference fits.
    let diff = magnitude(a.wrapping_sub(b));
    let abs_ok = rule.abs_tol.is_some_and(|t| {
        // diff × 10^-scale <= m × 10^-t  ⇔  diff × 10^(k-scale) <= m × 10^(k-t)
        let k = scale.max(t.scale);
        product(diff, pow10(k - scale))
            <= product(from_u128(t.mantissa as u128), pow10(k - t.scale))
    });
    let rel_ok = rule.rel_tol.is_some_and(|r| {
        // diff <= r × max(|a|, |b|), both at `scale`:  diff × 10^r.scale <= m × max
        let largest = magnitude(a).max(magnitude(b));
        product(diff, pow10(r.scale)) <= product(from_u128(r.mantissa as u128), largest)
    });
    abs_ok || rel_ok
}

/// An unsigned 256-bit number as little-endian 64-bit limbs, compared from the top.
type U256 = [u64; 4];

fn magnitude(v: i256) -> Wide<4> {
    let v = if v.is_negative() { v.wrapping_neg() } else { v };
    let bytes = v.to_le_bytes();
    let mut limbs = [0u64; 4];
    for (i, l) in limbs.iter_mut().enumerate() {
        *l = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    }
    Wide(limbs)
}

fn from_u128(v: u128) -> Wide<4> {
    Wide([v as u64, (v >> 64) as u64, 0, 0])
}

/// 10^n for n ≤ 76 (the largest that fits 256 bits).
fn pow10(n: u32) -> Wide<4> {
    let mut out = from_u128(1);
    for _ in 0..n {
        out = Wide(mul_small(out.0, 10));
    }
    out
}

fn mul_small(a: U256, m: u64) -> U256 {
    let mut out = [0u64; 4];
    let mut carry = 0u128;
    for i in 0..4 {
        let t = a[i] as u128 * m as u128 + carry;
        out[i] = t as u64;
        carry = t >> 64;
    }
    out
}

/// The full 512-bit product of two 256-bit numbers.
fn product(a: Wide<4>, b: Wide<4>) -> Wide<8> {
    let mut out = [0u64; 8];
    for i in 0..4 {
        let mut carry = 0u128;
        for j in 0..4 {
            let t = a.0[i] as u128 * b.0[j] as u128 + out[i + j] as u128 + carry;
            out[i + j] = t as u64;
            carry = t >> 64;
        }
        out[i + 4] = carry as u64;
    }
    Wide(out)
}

/// An unsigned number of `N` little-endian 64-bit limbs, ordered by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wide<const N: usize>([u64; N]);

impl<const N: usize> PartialOrd for Wide<N> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> Ord for Wide<N> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.iter().rev().cmp(other.0.iter().rev())
    }
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

    fn dec(v: i128) -> i256 {
        i256::from_i128(v)
    }

    #[test]
    fn float_tolerances_hold_exactly_as_documented() {
        let mut r = rule();
        r.abs_tol = Tolerance::from_f64(0.5);
        assert!(floats_equal(&r, 1.5, 1.0));
        // Regression: one ulp outside the tolerance compared equal through a slack.
        assert!(!floats_equal(&r, 1.5f64.next_up(), 1.0));
        // In f64, 1.1 - 1.0 is a little more than 0.1.
        r.abs_tol = Tolerance::from_f64(0.1);
        assert!(!floats_equal(&r, 1.1, 1.0));
        // Regression: infinities compared equal to each other and to finite values.
        r.abs_tol = Tolerance::from_f64(1e300);
        assert!(!floats_equal(&r, f64::INFINITY, f64::NEG_INFINITY));
        assert!(!floats_equal(&r, f64::INFINITY, 1.0));
        assert!(floats_equal(&r, f64::INFINITY, f64::INFINITY));
        assert!(!floats_equal(&r, f64::NAN, 1.0));
        assert!(!floats_equal(&r, f64::MAX, -f64::MAX));
        let mut r = rule();
        r.rel_tol = Tolerance::from_f64(0.5);
        assert!(floats_equal(&r, 2.0, 1.0));
        assert!(!floats_equal(&r, 2.0f64.next_up(), 1.0));
        assert!(!floats_equal(&r, f64::INFINITY, f64::MAX));
    }

    #[test]
    fn decimal_tolerances_are_exact_at_the_boundary() {
        let mut r = rule();
        r.abs_tol = Tolerance::from_f64(0.05);
        // 10.00 vs 10.05 under 0.05: on the boundary, equal.
        assert!(decimals_equal(&r, dec(1005), dec(1000), 2));
        assert!(!decimals_equal(&r, dec(1006), dec(1000), 2));
        // scale 4 values, tolerance 0.05 = 500 at scale 4
        assert!(decimals_equal(&r, dec(100_500), dec(100_000), 4));
        assert!(!decimals_equal(&r, dec(100_501), dec(100_000), 4));
        let mut r = rule();
        r.rel_tol = Tolerance::from_f64(0.01);
        assert!(decimals_equal(&r, dec(101), dec(100), 0));
        assert!(!decimals_equal(&r, dec(103), dec(100), 0));
        // 0.1 of 1.000 is 0.1000: 1.100 vs 1.000 is on the boundary.
        r.rel_tol = Tolerance::from_f64(0.1);
        assert!(decimals_equal(&r, dec(1100), dec(1000), 3));
        assert!(!decimals_equal(&r, dec(1112), dec(1000), 3));
    }

    #[test]
    fn integer_extremes_never_overflow() {
        let mut r = rule();
        r.abs_tol = Tolerance::from_f64(1.0);
        let (min, max) = (dec(i64::MIN as i128), dec(i64::MAX as i128));
        assert!(!decimals_equal(&r, min, max, 0));
        assert!(decimals_equal(&r, max, dec(i64::MAX as i128 - 1), 0));
        let umax = dec(u64::MAX as i128);
        assert!(!decimals_equal(&r, umax, min, 0));
        let big = i256::from_string(
            "99999999999999999999999999999999999999999999999999999999999999999999999999",
        )
        .unwrap();
        assert!(!decimals_equal(&r, big, big.wrapping_neg(), 0));
        let mut r = rule();
        r.rel_tol = Tolerance::from_f64(1.0);
        assert!(!decimals_equal(&r, big, big.wrapping_neg(), 0));
        r.rel_tol = Tolerance::from_f64(2.0);
        assert!(decimals_equal(&r, big, big.wrapping_neg(), 0));
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
