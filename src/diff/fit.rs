//! `recon_fit_…(value)`: a correction value cast to the type of the column it is to be
//! written to, or NULL when that column cannot hold it exactly. Corrections are exact or
//! absent: a value with more decimal places than the target's scale, a timestamp finer
//! than its unit, an integer out of its range or a fraction bound for an integer column
//! is never rounded; the classifier sees the NULL against a value and withholds the
//! correction (reason `unrepresentable`).
//!
//! A value fits when it survives the round trip: cast to the target type and back, it
//! is the value it was (floats compared by value, so -0.0 fits an integer column as 0).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::compute::kernels::cmp::distinct;
use arrow::compute::{CastOptions, cast_with_options, nullif};
use arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// A cast from one column's type to another's that refuses to round.
#[derive(Debug)]
pub struct ExactCast {
    name: String,
    to: DataType,
    signature: Signature,
}

impl PartialEq for ExactCast {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.to == other.to && self.signature == other.signature
    }
}
impl Eq for ExactCast {}
impl Hash for ExactCast {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ExactCast {
    pub fn new(name: impl Into<String>, from: DataType, to: DataType) -> Self {
        ExactCast {
            name: name.into(),
            to,
            signature: Signature::exact(vec![from], Volatility::Immutable),
        }
    }

    pub fn into_udf(self) -> ScalarUDF {
        ScalarUDF::new_from_impl(self)
    }

    /// `a` in the target type, NULL where the target cannot hold the value exactly.
    pub fn fit(&self, a: &ArrayRef) -> DfResult<ArrayRef> {
        exact_cast(a, &self.to)
    }
}

/// `a` cast to `to`, NULL where `to` cannot hold a value exactly.
pub fn exact_cast(a: &ArrayRef, to: &DataType) -> DfResult<ArrayRef> {
    if a.data_type() == to {
        return Ok(Arc::clone(a));
    }
    let safe = CastOptions {
        safe: true,
        ..Default::default()
    };
    // Into a dictionary: the exact cast into its values, then packed.
    if let DataType::Dictionary(_, values) = to {
        let out = exact_cast(a, values)?;
        return Ok(cast_with_options(&out, to, &safe)?);
    }
    // Dictionaries are compared by their values.
    let a = &match a.data_type() {
        DataType::Dictionary(_, values) => cast_with_options(a, values, &safe)?,
        _ => Arc::clone(a),
    };
    if to.is_floating() && (a.data_type().is_integer() || is_decimal(a.data_type())) {
        return exact_to_float(a, to);
    }
    let out = cast_instant(a, to, &safe)?;
    let back = cast_instant(&out, a.data_type(), &safe)?;
    let lost = lost(a, &back)?;
    if lost.true_count() == 0 {
        return Ok(out);
    }
    Ok(nullif(&out, &lost)?)
}

fn is_decimal(t: &DataType) -> bool {
    matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))
}

/// Integers or decimals as floats of type `to`, NULL where the float is not exactly the
/// value (0.1 is no f64; 2^53 + 1 is none either).
fn exact_to_float(a: &ArrayRef, to: &DataType) -> DfResult<ArrayRef> {
    let scale = match a.data_type() {
        DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => (*s).max(0) as usize,
        _ => 0,
    };
    // Integers and decimals as their digits (a decimal's at its scale).
    let text = arrow::compute::cast(a, &DataType::Utf8)?;
    let text = text.as_string::<i32>();
    // The nearest f64, then the nearest value of the target type.
    let nearest: arrow::array::Float64Array = text
        .iter()
        .map(|t| t.map(|t| t.parse::<f64>().unwrap_or(f64::NAN)))
        .collect();
    let nearest: ArrayRef = Arc::new(nearest);
    let out = arrow::compute::cast(&nearest, to)?;
    let back = arrow::compute::cast(&out, &DataType::Float64)?;
    let back = back.as_primitive::<Float64Type>();
    let lost: BooleanArray = (0..a.len())
        .map(|i| {
            Some(
                text.is_valid(i)
                    && (back.is_null(i)
                        || exact_decimal(back.value(i), scale).as_deref() != Some(text.value(i))),
            )
        })
        .collect();
    Ok(nullif(&out, &lost)?)
}

/// The exact value of `x` as decimal text with `scale` fraction digits, when it has no
/// more than that (an f64 `m × 2^-k`, `m` odd, has exactly `k` of them).
fn exact_decimal(x: f64, scale: usize) -> Option<String> {
    if !x.is_finite() {
        return None;
    }
    if x == 0.0 {
        return Some(format!("{:.scale$}", 0.0));
    }
    let bits = x.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i64;
    let mantissa = if exponent == 0 {
        (bits & ((1 << 52) - 1)) << 1
    } else {
        (bits & ((1 << 52) - 1)) | (1 << 52)
    };
    // x = mantissa × 2^(exponent - 1075)
    let power = exponent.max(1) - 1075 + i64::from(mantissa.trailing_zeros());
    let fraction_digits = (-power).max(0) as usize;
    (fraction_digits <= scale).then(|| format!("{x:.scale$}"))
}

/// `a` cast to `to`; timestamps as the same instant, naive values being UTC (Arrow's
/// own cast keeps a naive value's wall-clock time in the target's zone instead).
pub fn cast_instant(a: &ArrayRef, to: &DataType, options: &CastOptions) -> DfResult<ArrayRef> {
    match (a.data_type(), to) {
        (DataType::Timestamp(..), DataType::Timestamp(unit, zone)) => {
            // To naive keeps the UTC value, converting only the unit.
            let utc = cast_with_options(a, &DataType::Timestamp(*unit, None), options)?;
            Ok(with_zone(&utc, zone.clone()))
        }
        // Variable binary layouts and fixed-size binary meet through Binary, which
        // casts to and from every one of them (a value of another length is lost).
        (from, to)
            if is_binary(from) && is_binary(to) && !arrow::compute::can_cast_types(from, to) =>
        {
            let binary = cast_with_options(a, &DataType::Binary, options)?;
            Ok(cast_with_options(&binary, to, options)?)
        }
        _ => Ok(cast_with_options(a, to, options)?),
    }
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    )
}

/// A timestamp array with its zone set to `zone`, values unchanged.
fn with_zone(a: &ArrayRef, zone: Option<Arc<str>>) -> ArrayRef {
    use arrow::datatypes::{
        TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    match a.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => Arc::new(
            a.as_primitive::<TimestampSecondType>()
                .clone()
                .with_timezone_opt(zone),
        ),
        DataType::Timestamp(TimeUnit::Millisecond, _) => Arc::new(
            a.as_primitive::<TimestampMillisecondType>()
                .clone()
                .with_timezone_opt(zone),
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => Arc::new(
            a.as_primitive::<TimestampMicrosecondType>()
                .clone()
                .with_timezone_opt(zone),
        ),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Arc::new(
            a.as_primitive::<TimestampNanosecondType>()
                .clone()
                .with_timezone_opt(zone),
        ),
        _ => Arc::clone(a),
    }
}

/// Where `back` (the round trip of `a`) no longer holds `a`'s value.
fn lost(a: &ArrayRef, back: &ArrayRef) -> DfResult<BooleanArray> {
    if a.data_type().is_floating() {
        let f64s = DataType::Float64;
        let (a, back) = (
            arrow::compute::cast(a, &f64s)?,
            arrow::compute::cast(back, &f64s)?,
        );
        let (a, back) = (
            a.as_primitive::<Float64Type>(),
            back.as_primitive::<Float64Type>(),
        );
        return Ok((0..a.len())
            .map(|i| {
                Some(match (a.is_valid(i), back.is_valid(i)) {
                    (true, true) => {
                        let (x, y) = (a.value(i), back.value(i));
                        !(x == y || x.is_nan() && y.is_nan())
                    }
                    (valid, _) => valid,
                })
            })
            .collect());
    }
    let differs = distinct(a, back)?;
    // A NULL that stays NULL is kept; `distinct` is never NULL itself.
    Ok(differs)
}

impl ScalarUDFImpl for ExactCast {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.to.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = super::udf::arg_arrays(&args)?;
        let [a] = arrays.as_slice() else {
            return exec_err!("{} takes one argument", self.name);
        };
        Ok(ColumnarValue::Array(self.fit(a)?))
    }
}

/// The name of [`decimal_to_float`].
pub const DECIMAL_TO_FLOAT: &str = "recon_decimal_f64";

/// `recon_decimal_f64(d)`: a decimal as the nearest Float64, rounded once (Arrow's cast
/// rounds the mantissa to f64 and then divides by a power of ten, which can land an ulp
/// away).
pub fn decimal_to_float() -> ScalarUDF {
    super::udf::ArrayFunction::udf(
        DECIMAL_TO_FLOAT,
        Signature::any(1, Volatility::Immutable),
        DataType::Float64,
        decimals_to_f64,
    )
}

/// Each decimal of `a` as the nearest f64.
pub fn decimals_to_f64(a: &ArrayRef) -> DfResult<ArrayRef> {
    use arrow::datatypes::{Decimal128Type, Decimal256Type};
    let a = &match a.data_type() {
        DataType::Dictionary(_, v) => arrow::compute::cast(a, v)?,
        _ => Arc::clone(a),
    };
    let out: arrow::array::Float64Array = match a.data_type() {
        DataType::Decimal128(..) => {
            let d = a.as_primitive::<Decimal128Type>();
            (0..d.len())
                .map(|i| d.is_valid(i).then(|| parse_f64(&d.value_as_string(i))))
                .collect()
        }
        DataType::Decimal256(..) => {
            let d = a.as_primitive::<Decimal256Type>();
            (0..d.len())
                .map(|i| d.is_valid(i).then(|| parse_f64(&d.value_as_string(i))))
                .collect()
        }
        other => return exec_err!("{DECIMAL_TO_FLOAT} takes a decimal, not {other}"),
    };
    Ok(Arc::new(out))
}

/// Decimal text to the nearest f64 (Rust's parser rounds correctly).
fn parse_f64(text: &str) -> f64 {
    text.parse().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Decimal128Array, Float64Array, Int32Array, Int64Array, TimestampMicrosecondArray,
        UInt64Array,
    };
    use arrow::datatypes::TimeUnit;

    fn nulls(a: &ArrayRef) -> Vec<bool> {
        (0..a.len()).map(|i| a.is_null(i)).collect()
    }

    #[test]
    fn values_that_do_not_fit_become_null() {
        // An integer out of the target's range.
        let a: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(1 << 31), None]));
        let out = exact_cast(&a, &DataType::Int32).unwrap();
        assert_eq!(nulls(&out), [false, true, true]);
        assert_eq!(
            out.as_primitive::<arrow::datatypes::Int32Type>().value(0),
            1
        );
        // UInt64 above i64::MAX into Int64.
        let a: ArrayRef = Arc::new(UInt64Array::from(vec![u64::MAX, 5]));
        assert_eq!(
            nulls(&exact_cast(&a, &DataType::Int64).unwrap()),
            [true, false]
        );
        // More decimal places than the target's scale.
        let a: ArrayRef = Arc::new(
            Decimal128Array::from(vec![12345, 12300])
                .with_precision_and_scale(10, 4)
                .unwrap(),
        );
        let out = exact_cast(&a, &DataType::Decimal128(10, 2)).unwrap();
        assert_eq!(nulls(&out), [true, false]);
        // A timestamp finer than the target's unit.
        let a: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![1_000_001, 2_000_000]));
        let out = exact_cast(&a, &DataType::Timestamp(TimeUnit::Second, None)).unwrap();
        assert_eq!(nulls(&out), [true, false]);
        // A fraction, an infinity or NaN into an integer column; -0.0 fits as 0.
        let a: ArrayRef = Arc::new(Float64Array::from(vec![
            1.5,
            f64::INFINITY,
            f64::NAN,
            -0.0,
            3.0,
        ]));
        let out = exact_cast(&a, &DataType::Int32).unwrap();
        assert_eq!(nulls(&out), [true, true, true, false, false]);
        // Float64 into Float32: 0.1 is not a Float32, NaN is.
        let a: ArrayRef = Arc::new(Float64Array::from(vec![0.1, 0.5, f64::NAN]));
        let out = exact_cast(&a, &DataType::Float32).unwrap();
        assert_eq!(nulls(&out), [true, false, false]);
        // Regression: a naive value into a zoned column is the same instant (naive
        // values are UTC), not the same wall-clock time in the column's zone.
        let a: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![
            -2_208_988_800_000_000,
        ]));
        let to = DataType::Timestamp(TimeUnit::Millisecond, Some("-05:00".into()));
        let out = exact_cast(&a, &to).unwrap();
        assert_eq!(out.data_type(), &to);
        assert_eq!(
            out.as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                .value(0),
            -2_208_988_800_000
        );
        // Regression: Arrow's decimal to f64 cast is an ulp off for some values.
        let a: ArrayRef = Arc::new(
            Decimal128Array::from(vec![75726173152422662])
                .with_precision_and_scale(18, 4)
                .unwrap(),
        );
        let f = decimals_to_f64(&a).unwrap();
        let nearest: f64 = "7572617315242.2662".parse().unwrap();
        assert_eq!(f.as_primitive::<Float64Type>().value(0), nearest);
        // A decimal into a float column only when the float is exactly the decimal.
        let a: ArrayRef = Arc::new(
            Decimal128Array::from(vec![-33564, 25000, 1])
                .with_precision_and_scale(5, 4)
                .unwrap(),
        );
        assert_eq!(
            nulls(&exact_cast(&a, &DataType::Float64).unwrap()),
            [true, false, true]
        );
        let a: ArrayRef = Arc::new(Int64Array::from(vec![(1 << 53) + 1, 1 << 53, -7]));
        assert_eq!(
            nulls(&exact_cast(&a, &DataType::Float64).unwrap()),
            [true, false, false]
        );
        assert_eq!(
            nulls(&exact_cast(&a, &DataType::Float32).unwrap()),
            [true, false, false]
        );
        // Widening always fits.
        let a: ArrayRef = Arc::new(Int32Array::from(vec![i32::MIN, i32::MAX]));
        assert_eq!(
            nulls(&exact_cast(&a, &DataType::Int64).unwrap()),
            [false, false]
        );
    }
}
