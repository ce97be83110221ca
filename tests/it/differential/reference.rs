//! An independent reference of recon's documented diff semantics, written for clarity:
//! row by row over plain Rust values read out of Arrow arrays. It shares no comparison,
//! normalisation, rendering or classification code with `recon::diff` or `recon::write`.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::*;

use super::generate::{Deletes, EntityCase, Owner};

/// One cell, in the representation of its own column type (`Ts` in the column's unit,
/// `Date` in days, `Date64` in milliseconds, `Dec` as mantissa and scale).
#[derive(Clone, Debug)]
pub enum V {
    Null,
    Int(i128),
    Dec(i256, i8),
    F(f64),
    Str(String),
    Bin(Vec<u8>),
    Bool(bool),
    Date(i64),
    Date64(i64),
    Ts(i64),
}

impl V {
    pub fn is_null(&self) -> bool {
        matches!(self, V::Null)
    }
}

/// Bit-exact equality (floats by their bits).
pub fn same(a: &V, b: &V) -> bool {
    match (a, b) {
        (V::F(x), V::F(y)) => x.to_bits() == y.to_bits(),
        (V::Null, V::Null) => true,
        (V::Int(x), V::Int(y)) => x == y,
        (V::Dec(x, s), V::Dec(y, t)) => x == y && s == t,
        (V::Str(x), V::Str(y)) => x == y,
        (V::Bin(x), V::Bin(y)) => x == y,
        (V::Bool(x), V::Bool(y)) => x == y,
        (V::Date(x), V::Date(y)) => x == y,
        (V::Date64(x), V::Date64(y)) => x == y,
        (V::Ts(x), V::Ts(y)) => x == y,
        _ => false,
    }
}

/// A short literal for printed cases.
pub fn lit(v: &V) -> String {
    match v {
        V::Null => "NULL".into(),
        V::Int(i) => i.to_string(),
        V::Dec(m, s) => decimal_text(*m, *s as i32),
        V::F(f) => format!("{f:?}"),
        V::Str(s) => format!("{s:?}"),
        V::Bin(b) => format!("x'{}'", hex::encode(b)),
        V::Bool(b) => b.to_string(),
        V::Date(d) => format!("date({})", date_text(*d)),
        V::Date64(ms) => format!("date64({ms})"),
        V::Ts(t) => format!("ts({t})"),
    }
}

/// The cell of `a` at `row`.
pub fn read_value(a: &dyn Array, row: usize) -> V {
    if a.is_null(row) {
        return V::Null;
    }
    match a.data_type() {
        DataType::Int8 => V::Int(a.as_primitive::<Int8Type>().value(row) as i128),
        DataType::Int16 => V::Int(a.as_primitive::<Int16Type>().value(row) as i128),
        DataType::Int32 => V::Int(a.as_primitive::<Int32Type>().value(row) as i128),
        DataType::Int64 => V::Int(a.as_primitive::<Int64Type>().value(row) as i128),
        DataType::UInt8 => V::Int(a.as_primitive::<UInt8Type>().value(row) as i128),
        DataType::UInt16 => V::Int(a.as_primitive::<UInt16Type>().value(row) as i128),
        DataType::UInt32 => V::Int(a.as_primitive::<UInt32Type>().value(row) as i128),
        DataType::UInt64 => V::Int(a.as_primitive::<UInt64Type>().value(row) as i128),
        DataType::Float16 => {
            let wide = arrow::compute::cast(&a.slice(row, 1), &DataType::Float64).unwrap();
            V::F(wide.as_primitive::<Float64Type>().value(0))
        }
        DataType::Float32 => V::F(a.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Float64 => V::F(a.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(_, s) => V::Dec(
            i256::from_i128(a.as_primitive::<Decimal128Type>().value(row)),
            *s,
        ),
        DataType::Decimal256(_, s) => V::Dec(a.as_primitive::<Decimal256Type>().value(row), *s),
        DataType::Utf8 => V::Str(a.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => V::Str(a.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => V::Str(a.as_string_view().value(row).to_string()),
        DataType::Binary => V::Bin(a.as_binary::<i32>().value(row).to_vec()),
        DataType::LargeBinary => V::Bin(a.as_binary::<i64>().value(row).to_vec()),
        DataType::BinaryView => V::Bin(a.as_binary_view().value(row).to_vec()),
        DataType::FixedSizeBinary(_) => V::Bin(a.as_fixed_size_binary().value(row).to_vec()),
        DataType::Boolean => V::Bool(a.as_boolean().value(row)),
        DataType::Date32 => V::Date(a.as_primitive::<Date32Type>().value(row) as i64),
        DataType::Date64 => V::Date64(a.as_primitive::<Date64Type>().value(row)),
        DataType::Timestamp(TimeUnit::Second, _) => {
            V::Ts(a.as_primitive::<TimestampSecondType>().value(row))
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            V::Ts(a.as_primitive::<TimestampMillisecondType>().value(row))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            V::Ts(a.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            V::Ts(a.as_primitive::<TimestampNanosecondType>().value(row))
        }
        DataType::Dictionary(k, _) => {
            let d = a.as_any_dictionary();
            let keys = d.keys();
            let i = match k.as_ref() {
                DataType::Int8 => keys.as_primitive::<Int8Type>().value(row) as usize,
                DataType::Int16 => keys.as_primitive::<Int16Type>().value(row) as usize,
                DataType::Int32 => keys.as_primitive::<Int32Type>().value(row) as usize,
                DataType::Int64 => keys.as_primitive::<Int64Type>().value(row) as usize,
                DataType::UInt8 => keys.as_primitive::<UInt8Type>().value(row) as usize,
                DataType::UInt16 => keys.as_primitive::<UInt16Type>().value(row) as usize,
                DataType::UInt32 => keys.as_primitive::<UInt32Type>().value(row) as usize,
                other => panic!("dictionary key type {other}"),
            };
            read_value(d.values().as_ref(), i)
        }
        other => panic!("the reference does not read {other}"),
    }
}

/// The value type behind a dictionary.
pub fn value_type(t: &DataType) -> &DataType {
    match t {
        DataType::Dictionary(_, v) => v,
        t => t,
    }
}

// ---------------------------------------------------------------------------------------
// Kinds: how a pair of column types is compared and rendered.

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Int,
    /// Integers and decimals, at this scale.
    Dec(i32),
    Float,
    Text,
    Bin,
    Bool,
    Date,
    /// Timestamps, rendered in this zone (None: naive).
    Ts(Option<String>),
}

fn is_int(t: &DataType) -> bool {
    value_type(t).is_integer()
}
fn is_float(t: &DataType) -> bool {
    matches!(
        value_type(t),
        DataType::Float16 | DataType::Float32 | DataType::Float64
    )
}
fn dec_scale(t: &DataType) -> Option<i32> {
    match value_type(t) {
        DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => Some(*s as i32),
        t if t.is_integer() => Some(0),
        _ => None,
    }
}

/// The README: integers of any width, decimals of any scale (and integers against
/// decimals), floats against either (as Float64), the three string layouts, timestamps
/// of any unit, zoned against naive (naive taken as UTC).
pub fn kind_of(a: &DataType, b: &DataType) -> Kind {
    let (va, vb) = (value_type(a), value_type(b));
    let numeric = |t: &DataType| is_int(t) || is_float(t) || dec_scale(t).is_some();
    if numeric(va) && numeric(vb) {
        if is_float(va) || is_float(vb) {
            return Kind::Float;
        }
        if is_int(va) && is_int(vb) {
            return Kind::Int;
        }
        return Kind::Dec(dec_scale(va).unwrap().max(dec_scale(vb).unwrap()));
    }
    match (va, vb) {
        (
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View,
        ) => Kind::Text,
        (DataType::Boolean, DataType::Boolean) => Kind::Bool,
        (DataType::Date32 | DataType::Date64, DataType::Date32 | DataType::Date64) => Kind::Date,
        // Zoned timestamps render in UTC (README, Column kinds), naive ones as written.
        (DataType::Timestamp(_, za), DataType::Timestamp(_, zb)) => Kind::Ts(match (za, zb) {
            (None, None) => None,
            _ => Some("UTC".into()),
        }),
        (a, b) if is_binary(a) && is_binary(b) => Kind::Bin,
        (a, b) => panic!("the generator paired {a} with {b}"),
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

fn unit_ns(u: TimeUnit) -> i128 {
    match u {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

fn ts_unit(t: &DataType) -> TimeUnit {
    match value_type(t) {
        DataType::Timestamp(u, _) => *u,
        t => panic!("not a timestamp: {t}"),
    }
}

/// Nanoseconds since the epoch (UTC) of a timestamp cell.
fn ts_ns(v: &V, t: &DataType) -> i128 {
    match v {
        V::Ts(x) => *x as i128 * unit_ns(ts_unit(t)),
        v => panic!("not a timestamp value: {v:?}"),
    }
}

fn days(v: &V) -> i64 {
    match v {
        V::Date(d) => *d,
        V::Date64(ms) => ms.div_euclid(86_400_000),
        v => panic!("not a date: {v:?}"),
    }
}

/// An exact number: mantissa × 10^-scale.
#[derive(Clone, Copy, Debug)]
struct Exact {
    m: i256,
    scale: i32,
}

fn pow10(n: i32) -> i256 {
    i256::from_i128(10)
        .checked_pow(n as u32)
        .expect("10^n fits")
}

impl Exact {
    fn at(self, scale: i32) -> i256 {
        assert!(scale >= self.scale);
        self.m
            .checked_mul(pow10(scale - self.scale))
            .expect("rescaled value fits 256 bits")
    }
}

fn exact(v: &V) -> Exact {
    match v {
        V::Int(i) => Exact {
            m: i256::from_i128(*i),
            scale: 0,
        },
        V::Dec(m, s) => Exact {
            m: *m,
            scale: *s as i32,
        },
        v => panic!("not an exact number: {v:?}"),
    }
}

fn exact_f64(e: Exact) -> f64 {
    decimal_text(e.m, e.scale).parse().expect("decimal text")
}

/// The value as Float64: integers and decimals to the nearest double.
fn as_f64(v: &V) -> f64 {
    match v {
        V::F(f) => *f,
        V::Int(i) => *i as f64,
        V::Dec(..) => exact_f64(exact(v)),
        v => panic!("not a number: {v:?}"),
    }
}

/// The exact decimal value of a finite double (None when it needs more than 70 digits).
fn f64_exact(x: f64) -> Option<Exact> {
    if !x.is_finite() {
        return None;
    }
    let text = format!("{:.1074}", x.abs());
    let text = text.trim_end_matches('0').trim_end_matches('.');
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 70 {
        return None;
    }
    let m = if digits.is_empty() {
        i256::ZERO
    } else {
        i256::from_string(digits)?
    };
    Some(Exact {
        m: if x < 0.0 { m.wrapping_neg() } else { m },
        scale: frac.len() as i32,
    })
}

/// A tolerance from its shortest round-trip decimal text.
fn tolerance(x: f64) -> Exact {
    let text = format!("{x}");
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    Exact {
        m: i256::from_string(&format!("{int}{frac}")).expect("tolerance digits"),
        scale: frac.len() as i32,
    }
}

// ---------------------------------------------------------------------------------------
// Canonical text.

pub fn decimal_text(m: i256, scale: i32) -> String {
    let neg = m.is_negative();
    let digits = m.wrapping_abs().to_string();
    let s = scale.max(0) as usize;
    let body = if s == 0 {
        digits
    } else {
        let padded = format!("{digits:0>width$}", width = s + 1);
        let (i, f) = padded.split_at(padded.len() - s);
        format!("{i}.{f}")
    };
    if neg { format!("-{body}") } else { body }
}

/// Shortest round-trip digits laid out as Arrow (ryu) does: `1.0`, `0.001234`, `1e30`,
/// `1.234e-7`, `NaN`, `inf`.
pub fn float_text(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    let sci = format!("{:e}", x.abs());
    let (mant, exp) = sci.split_once('e').expect("exponent");
    let exp: i32 = exp.parse().expect("exponent digits");
    let mut digits: String = mant.chars().filter(|c| *c != '.').collect();
    // On an exact tie between two shortest candidates, the even one (as ryu does).
    if let (Some(e), Ok(d)) = (f64_exact(x.abs()), digits.parse::<i128>())
        && d % 2 == 1
        && digits.len() > 1
    {
        let k = exp + 1 - digits.len() as i32; // x ≈ d × 10^k
        let s = e.scale.max(-k);
        if s - e.scale <= 40 && s + k <= 40 {
            let exact_v = e.at(s);
            let at = |c: i128| i256::from_i128(c).checked_mul(pow10(s + k));
            if let (Some(dv), Some(lo), Some(hi)) = (at(d), at(d - 1), at(d + 1)) {
                let dist = (dv.wrapping_sub(exact_v)).wrapping_abs();
                for (c, cv) in [(d - 1, lo), (d + 1, hi)] {
                    let back: f64 = format!("{c}e{k}").parse().unwrap();
                    if back == x.abs() && cv.wrapping_sub(exact_v).wrapping_abs() == dist {
                        digits = c.to_string();
                    }
                }
            }
        }
    }
    let len = digits.len() as i32;
    let kk = exp + 1; // 10^(kk-1) <= x < 10^kk
    let k = kk - len; // x = digits × 10^k
    let body = if 0 <= k && kk <= 16 {
        format!("{digits}{}.0", "0".repeat(k as usize))
    } else if 0 < kk && kk <= 16 {
        let (i, f) = digits.split_at(kk as usize);
        format!("{i}.{f}")
    } else if -5 < kk && kk <= 0 {
        format!("0.{}{digits}", "0".repeat((-kk) as usize))
    } else if len == 1 {
        format!("{digits}e{}", kk - 1)
    } else {
        format!("{}.{}e{}", &digits[..1], &digits[1..], kk - 1)
    };
    format!("{sign}{body}")
}

/// Civil date of a day number (days since 1970-01-01).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Day number of a civil date.
pub fn day_number(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn date_text(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// ISO 8601 of an instant: naive (`2024-01-01T00:00:00.123`), UTC (`…Z`) or at a fixed
/// offset (`…+02:00`); the fraction in groups of 3, 6 or 9 digits, none when zero.
fn ts_text(ns: i128, zone: Option<&str>) -> String {
    let offset_s: i128 = match zone {
        None | Some("UTC") | Some("+00:00") => 0,
        Some(z) => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (h, m) = z[1..].split_once(':').expect("fixed offset");
            sign * (h.parse::<i128>().unwrap() * 3600 + m.parse::<i128>().unwrap() * 60)
        }
    };
    let local = ns + offset_s * 1_000_000_000;
    let secs = local.div_euclid(1_000_000_000);
    let nanos = local.rem_euclid(1_000_000_000);
    let day = secs.div_euclid(86_400) as i64;
    let sod = secs.rem_euclid(86_400);
    let frac = if nanos == 0 {
        String::new()
    } else if nanos % 1_000_000 == 0 {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    };
    let suffix = match zone {
        None => String::new(),
        Some(_) if offset_s == 0 => "Z".into(),
        Some(z) => z.to_string(),
    };
    format!(
        "{}T{:02}:{:02}:{:02}{frac}{suffix}",
        date_text(day),
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Canonical text of a value of type `t` compared in `kind`; None for NULL.
pub fn text(v: &V, t: &DataType, kind: &Kind) -> Option<String> {
    if v.is_null() {
        return None;
    }
    Some(match kind {
        Kind::Int => match v {
            V::Int(i) => i.to_string(),
            v => panic!("integer kind, value {v:?}"),
        },
        Kind::Dec(s) => decimal_text(exact(v).at(*s), *s),
        Kind::Float => float_text(as_f64(v)),
        Kind::Text => match v {
            V::Str(s) => s.clone(),
            v => panic!("text kind, value {v:?}"),
        },
        Kind::Bin => match v {
            V::Bin(b) => hex::encode(b),
            v => panic!("binary kind, value {v:?}"),
        },
        Kind::Bool => match v {
            V::Bool(b) => b.to_string(),
            v => panic!("boolean kind, value {v:?}"),
        },
        Kind::Date => date_text(days(v)),
        Kind::Ts(zone) => ts_text(ts_ns(v, t), zone.as_deref()),
    })
}

/// A key part as JSON: integers and decimals as numbers (decimals in their canonical
/// text, e.g. `1.50`), text as strings, booleans as booleans, anything else as the
/// string of its canonical text.
fn key_json_part(v: &V, t: &DataType, kind: &Kind) -> String {
    match (v, kind) {
        (V::Null, _) => "null".into(),
        (V::Int(i), Kind::Int) => i.to_string(),
        (_, Kind::Dec(_)) => text(v, t, kind).expect("not null"),
        (V::Bool(b), _) => b.to_string(),
        _ => serde_json::Value::String(text(v, t, kind).expect("not null")).to_string(),
    }
}

/// A key as canonical JSON: the key columns by source name, sorted.
pub fn key_json(parts: &[(&str, &V, &DataType, &Kind)]) -> String {
    let mut sorted: Vec<_> = parts.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::from("{");
    for (i, (name, v, t, kind)) in sorted.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(name.to_string()).to_string());
        out.push(':');
        out.push_str(&key_json_part(v, t, kind));
    }
    out.push('}');
    out
}

/// A key part normalised for matching across the two sides' types.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KeyAtom {
    Int(i128),
    Dec(i256),
    Str(String),
    Bin(Vec<u8>),
    Bool(bool),
    Date(i64),
    Ts(i128),
}

fn key_atom(v: &V, t: &DataType, kind: &Kind) -> KeyAtom {
    match kind {
        Kind::Int => match v {
            V::Int(i) => KeyAtom::Int(*i),
            v => panic!("{v:?}"),
        },
        Kind::Dec(s) => KeyAtom::Dec(exact(v).at(*s)),
        Kind::Text => match v {
            V::Str(s) => KeyAtom::Str(s.clone()),
            v => panic!("{v:?}"),
        },
        Kind::Bin => match v {
            V::Bin(b) => KeyAtom::Bin(b.clone()),
            v => panic!("{v:?}"),
        },
        Kind::Bool => match v {
            V::Bool(b) => KeyAtom::Bool(*b),
            v => panic!("{v:?}"),
        },
        Kind::Date => KeyAtom::Date(days(v)),
        Kind::Ts(_) => KeyAtom::Ts(ts_ns(v, t)),
        Kind::Float => panic!("float keys are not generated"),
    }
}

// ---------------------------------------------------------------------------------------
// Comparison.

pub const NULL_VS_VALUE: &str = "null_vs_value";

/// None when equal under the rule, otherwise the reason.
fn compare(
    a: &V,
    ta: &DataType,
    b: &V,
    tb: &DataType,
    kind: &Kind,
    rule: &super::generate::Rule,
) -> Option<&'static str> {
    if let Kind::Text = kind {
        let raw = |v: &V| match v {
            V::Null => None,
            V::Str(s) => Some(s.clone()),
            v => panic!("{v:?}"),
        };
        let (ra, rb) = (raw(a), raw(b));
        let has = |c: &str| rule.compare.iter().any(|x| x == c);
        let norm = |x: &Option<String>| -> Option<String> {
            let x = x.as_ref().map(|s| {
                if has("trim") {
                    s.trim().to_string()
                } else {
                    s.clone()
                }
            });
            let x = x.filter(|s| !(has("null_equals_empty") && s.is_empty()));
            x.map(|s| {
                if has("case_insensitive") {
                    s.to_lowercase()
                } else {
                    s
                }
            })
        };
        let (na, nb) = (norm(&ra), norm(&rb));
        if na == nb {
            return None;
        }
        return Some(match (&ra, &rb, &na, &nb) {
            (Some(x), Some(y), Some(_), Some(_)) => {
                if x.to_lowercase() == y.to_lowercase() {
                    "case_only"
                } else if x.trim() == y.trim() {
                    "whitespace_only"
                } else {
                    "value"
                }
            }
            _ => NULL_VS_VALUE,
        });
    }
    match (a.is_null(), b.is_null()) {
        (true, true) => return None,
        (true, false) | (false, true) => return Some(NULL_VS_VALUE),
        _ => {}
    }
    let equal = match kind {
        Kind::Float => {
            let (x, y) = (as_f64(a), as_f64(b));
            if x == y || (x.is_nan() && y.is_nan()) {
                true
            } else if !(x.is_finite() && y.is_finite()) {
                false
            } else {
                let d = (x - y).abs();
                rule.abs_tol.is_some_and(|t| d <= t)
                    || rule.rel_tol.is_some_and(|r| d <= r * x.abs().max(y.abs()))
            }
        }
        Kind::Int | Kind::Dec(_) => {
            let (x, y) = (exact(a), exact(b));
            let mut s = x.scale.max(y.scale);
            for t in [rule.abs_tol, rule.rel_tol].into_iter().flatten() {
                s = s.max(tolerance(t).scale);
            }
            let (xm, ym) = (x.at(s), y.at(s));
            if xm == ym {
                true
            } else {
                let d = xm.checked_sub(ym).unwrap().wrapping_abs();
                let abs_ok = rule.abs_tol.is_some_and(|t| d <= tolerance(t).at(s));
                let rel_ok = rule.rel_tol.is_some_and(|r| {
                    // d·10^-s <= (m·10^-rs)·max·10^-s  ⇔  d·10^rs <= m·max
                    let r = tolerance(r);
                    let max = xm.wrapping_abs().max(ym.wrapping_abs());
                    d.checked_mul(pow10(r.scale)).unwrap() <= r.m.checked_mul(max).unwrap()
                });
                abs_ok || rel_ok
            }
        }
        Kind::Ts(_) => {
            let step = match rule.precision.as_deref() {
                None => 1,
                Some("s") => 1_000_000_000,
                Some("ms") => 1_000_000,
                Some("us") => 1_000,
                Some("ns") => 1,
                Some(p) => panic!("precision {p}"),
            };
            ts_ns(a, ta).div_euclid(step) == ts_ns(b, tb).div_euclid(step)
        }
        Kind::Date => days(a) == days(b),
        Kind::Bool | Kind::Bin => same(a, b),
        Kind::Text => unreachable!(),
    };
    if equal {
        None
    } else if matches!(kind, Kind::Float | Kind::Int | Kind::Dec(_)) {
        Some("numeric_delta")
    } else {
        Some("value")
    }
}

/// replica − source: in Float64 when either side is a float, otherwise exact and
/// rounded once.
fn delta(a: &V, b: &V, kind: &Kind) -> Option<f64> {
    if a.is_null() || b.is_null() {
        return None;
    }
    match kind {
        Kind::Float => Some(as_f64(b) - as_f64(a)),
        Kind::Int | Kind::Dec(_) => {
            let (x, y) = (exact(a), exact(b));
            let s = x.scale.max(y.scale);
            let d = y.at(s).checked_sub(x.at(s)).unwrap();
            Some(exact_f64(Exact { m: d, scale: s }))
        }
        _ => None,
    }
}

/// Whether the replica's `by` value is later than the source's (both present).
fn later(a: &V, ta: &DataType, b: &V, tb: &DataType, kind: &Kind) -> bool {
    if a.is_null() || b.is_null() {
        return false;
    }
    match kind {
        Kind::Ts(_) => ts_ns(b, tb) > ts_ns(a, ta),
        Kind::Date => days(b) > days(a),
        Kind::Int | Kind::Dec(_) => {
            let (x, y) = (exact(a), exact(b));
            let s = x.scale.max(y.scale);
            y.at(s) > x.at(s)
        }
        Kind::Float => as_f64(b) > as_f64(a),
        k => panic!("`by` of kind {k:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Exact conversion of a value into another column type (None: not representable).

pub fn convert(v: &V, from: &DataType, to: &DataType) -> Option<V> {
    if v.is_null() {
        return Some(V::Null);
    }
    let (f, t) = (value_type(from), value_type(to));
    let int_range = |t: &DataType| -> (i128, i128) {
        match t {
            DataType::Int8 => (i8::MIN as i128, i8::MAX as i128),
            DataType::Int16 => (i16::MIN as i128, i16::MAX as i128),
            DataType::Int32 => (i32::MIN as i128, i32::MAX as i128),
            DataType::Int64 => (i64::MIN as i128, i64::MAX as i128),
            DataType::UInt8 => (0, u8::MAX as i128),
            DataType::UInt16 => (0, u16::MAX as i128),
            DataType::UInt32 => (0, u32::MAX as i128),
            DataType::UInt64 => (0, u64::MAX as i128),
            t => panic!("{t}"),
        }
    };
    match t {
        t if t.is_integer() => {
            let i = match v {
                V::Int(i) => *i,
                V::Dec(..) => {
                    let e = exact(v);
                    if e.scale < 0 {
                        return None;
                    }
                    let p = pow10(e.scale);
                    if e.m.checked_rem(p)? != i256::ZERO {
                        return None;
                    }
                    e.m.checked_div(p)?.to_i128()?
                }
                V::F(x) => {
                    let e = f64_exact(*x)?;
                    if e.scale != 0 {
                        return None;
                    }
                    e.m.to_i128()?
                }
                _ => panic!("{v:?} into {t}"),
            };
            let (lo, hi) = int_range(t);
            (lo..=hi).contains(&i).then_some(V::Int(i))
        }
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
            let s = *s as i32;
            let m = match v {
                V::Int(_) | V::Dec(..) => {
                    let e = exact(v);
                    if e.scale <= s {
                        e.at(s)
                    } else {
                        let q = pow10(e.scale - s);
                        if e.m.checked_rem(q)? != i256::ZERO {
                            return None;
                        }
                        e.m.checked_div(q)?
                    }
                }
                V::F(x) => {
                    let e = f64_exact(*x)?;
                    if e.scale > s {
                        return None;
                    }
                    e.at(s)
                }
                _ => panic!("{v:?} into {t}"),
            };
            (m.wrapping_abs() < pow10(*p as i32)).then_some(V::Dec(m, s as i8))
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let x = match v {
                V::F(x) => *x,
                V::Int(_) | V::Dec(..) => {
                    let x = as_f64(v);
                    let (e, back) = (exact(v), f64_exact(x)?);
                    let k = e.scale.max(back.scale);
                    if e.at(k) != back.at(k) {
                        return None;
                    }
                    x
                }
                _ => panic!("{v:?} into {t}"),
            };
            match t {
                DataType::Float64 => Some(V::F(x)),
                DataType::Float32 => {
                    let y = x as f32 as f64;
                    (y.to_bits() == x.to_bits() || x.is_nan()).then_some(V::F(y))
                }
                _ => fits_f16(x).then_some(V::F(x)),
            }
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(v.clone()),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Some(v.clone()),
        DataType::FixedSizeBinary(n) => match v {
            V::Bin(b) if b.len() == *n as usize => Some(v.clone()),
            _ => None,
        },
        DataType::Boolean => Some(v.clone()),
        DataType::Date32 => {
            let d = match v {
                V::Date(d) => *d,
                V::Date64(ms) if ms.rem_euclid(86_400_000) == 0 => ms / 86_400_000,
                _ => return None,
            };
            i32::try_from(d).ok().map(|d| V::Date(d as i64))
        }
        DataType::Date64 => Some(V::Date64(match v {
            V::Date(d) => d.checked_mul(86_400_000)?,
            V::Date64(ms) => *ms,
            _ => return None,
        })),
        DataType::Timestamp(u, _) => {
            let ns = ts_ns(v, f);
            let step = unit_ns(*u);
            if ns.rem_euclid(step) != 0 {
                return None;
            }
            i64::try_from(ns / step).ok().map(V::Ts)
        }
        t => panic!("convert into {t}"),
    }
}

/// Whether a double is exactly a half-precision value (11 significant bits, exponent
/// from -24, at most 65504), or NaN or an infinity.
fn fits_f16(x: f64) -> bool {
    if !x.is_finite() || x == 0.0 {
        return true;
    }
    if x.abs() > 65504.0 {
        return false;
    }
    let y = x.abs() * (1u64 << 24) as f64;
    if y.fract() != 0.0 {
        return false;
    }
    let y = y as u64;
    (y >> y.trailing_zeros()) < (1 << 11)
}

// ---------------------------------------------------------------------------------------
// The expected outputs of one entity.

#[derive(Clone, Debug, PartialEq)]
pub struct Disc {
    pub key: String,
    pub kind: String,
    pub field: Option<String>,
    pub source_value: Option<String>,
    pub replica_value: Option<String>,
    pub owner: Option<String>,
    pub action: String,
    pub reason: Option<String>,
    /// Bits of the delta (NaN compares equal to NaN).
    pub delta: Option<f64>,
    /// (system, op) of the correction that repairs it.
    pub corrected_by: Option<(String, String)>,
}

impl Disc {
    /// One line for comparisons and messages.
    pub fn line(&self) -> String {
        let o = |x: &Option<String>| x.clone().unwrap_or_else(|| "∅".into());
        let d = match self.delta {
            None => "∅".into(),
            Some(x) if x.is_nan() => "NaN".into(),
            Some(x) => format!("{x:?}"),
        };
        let c = match &self.corrected_by {
            None => "∅".into(),
            Some((s, op)) => format!("{s}/{op}"),
        };
        format!(
            "{} | {} | {} | {} | {} | {} | {} | {} | {} | {}",
            self.key,
            self.kind,
            o(&self.field),
            o(&self.source_value),
            o(&self.replica_value),
            o(&self.owner),
            self.action,
            o(&self.reason),
            d,
            c
        )
    }
}

#[derive(Clone, Debug)]
pub struct Corr {
    pub key: String,
    pub op: String,
    pub changed: Vec<String>,
    /// (column, value to set) for every payload column (NULL where not set).
    pub values: Vec<(String, V)>,
    pub expected: Option<Vec<(String, V)>>,
}

impl Corr {
    pub fn line(&self) -> String {
        let vals = |vs: &[(String, V)]| {
            vs.iter()
                .map(|(n, v)| format!("{n}={}", lit(v)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut changed = self.changed.clone();
        changed.sort();
        format!(
            "{} | {} | [{}] | set {{{}}} | expected {}",
            self.key,
            self.op,
            changed.join(","),
            vals(&self.values),
            match &self.expected {
                None => "∅".to_string(),
                Some(e) => format!("{{{}}}", vals(e)),
            }
        )
    }
}

#[derive(Debug, Default)]
pub struct Expected {
    pub discrepancies: Vec<Disc>,
    /// Per system: corrections, and each payload column's (name, type).
    pub corrections: BTreeMap<String, Vec<Corr>>,
    pub payload: BTreeMap<String, Vec<(String, DataType)>>,
    pub counts: BTreeMap<(String, Option<String>), u64>,
    pub ops: BTreeMap<(String, String), u64>,
    pub rows: (u64, u64),
}

/// One mapped column: present on both sides (after renames).
#[derive(Clone, Debug)]
pub struct Mapped {
    pub source: String,
    pub replica: String,
    pub ts: DataType,
    pub tr: DataType,
    pub si: usize,
    pub ri: usize,
    pub is_key: bool,
    pub kind: Kind,
}

pub const SOURCE: &str = "monolith";
pub const REPLICA: &str = "service";
/// Midnight UTC of the run date (2024-06-01), in seconds.
pub fn run_midnight_s() -> i64 {
    day_number(2024, 6, 1) * 86_400
}

/// A side's snapshot as the reference sees it: column names, types and rows.
pub struct Table {
    pub names: Vec<String>,
    pub types: Vec<DataType>,
    pub rows: Vec<Vec<V>>,
}

impl Table {
    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// The mapped columns: keys in the job's key order, then every source column present in
/// the replica (after renames), in source order.
pub fn mapped_columns(e: &EntityCase, s: &Table, r: &Table) -> Vec<Mapped> {
    let rename = e.rename();
    let rname = |n: &str| rename.get(n).cloned().unwrap_or_else(|| n.to_string());
    let mk = |name: &str, is_key: bool| -> Option<Mapped> {
        let si = s.index(name)?;
        let ri = r.index(&rname(name))?;
        Some(Mapped {
            source: name.into(),
            replica: rname(name),
            ts: s.types[si].clone(),
            tr: r.types[ri].clone(),
            si,
            ri,
            is_key,
            kind: kind_of(&s.types[si], &r.types[ri]),
        })
    };
    let mut out: Vec<Mapped> = e
        .key
        .iter()
        .map(|k| mk(k, true).expect("key on both sides"))
        .collect();
    for n in &s.names {
        if !e.key.contains(n)
            && let Some(m) = mk(n, false)
        {
            out.push(m);
        }
    }
    out
}

/// Whether a row is soft-deleted on a side, given the soft column's index and type.
fn soft_deleted(row: &[V], col: Option<(usize, &DataType)>, deleted_value: Option<bool>) -> bool {
    let Some((i, t)) = col else { return false };
    match value_type(t) {
        DataType::Boolean => matches!(row[i], V::Bool(b) if b == deleted_value.unwrap_or(true)),
        _ => !row[i].is_null(),
    }
}

/// The value a soft delete writes into a soft column of type `t`.
fn soft_marker(t: &DataType, deleted_value: Option<bool>, deleted: bool) -> V {
    match value_type(t) {
        DataType::Boolean => V::Bool(deleted_value.unwrap_or(true) == deleted),
        _ if !deleted => V::Null,
        DataType::Date32 => V::Date(run_midnight_s() / 86_400),
        DataType::Date64 => V::Date64(run_midnight_s() * 1000),
        DataType::Timestamp(u, _) => {
            V::Ts((run_midnight_s() as i128 * 1_000_000_000 / unit_ns(*u)) as i64)
        }
        t => panic!("soft column of type {t}"),
    }
}

/// Every expected output of one entity.
pub fn expect(e: &EntityCase, s: &Table, r: &Table) -> Expected {
    let mut out = Expected {
        rows: (s.rows.len() as u64, r.rows.len() as u64),
        ..Default::default()
    };
    let mapped = mapped_columns(e, s, r);
    let keys: Vec<&Mapped> = mapped.iter().filter(|m| m.is_key).collect();
    let (soft_col, deleted_value) = match &e.deletes {
        Deletes::Soft {
            column,
            deleted_value,
        } => (Some(column.clone()), *deleted_value),
        _ => (None, None),
    };
    let rename = e.rename();
    let rname = |n: &str| rename.get(n).cloned().unwrap_or_else(|| n.to_string());
    let s_soft = soft_col
        .as_ref()
        .and_then(|c| s.index(c).map(|i| (i, &s.types[i])));
    let r_soft = soft_col
        .as_ref()
        .map(|c| r.index(&rname(c)).expect("soft column in the replica"))
        .map(|i| (i, &r.types[i]));
    // The replica's soft column when it is not a mapped column.
    let extra_soft = soft_col
        .as_ref()
        .filter(|c| !mapped.iter().any(|m| &m.source == *c))
        .map(|c| (rname(c), r_soft.unwrap().0, r_soft.unwrap().1.clone()));
    let fields: Vec<&Mapped> = mapped
        .iter()
        .filter(|m| {
            !m.is_key
                && Some(&m.source) != soft_col.as_ref()
                && !e.rules.get(&m.source).is_some_and(|r| r.ignore)
        })
        .collect();
    let default_rule = super::generate::Rule::default();
    let rule_of = |m: &Mapped| e.rules.get(&m.source).unwrap_or(&default_rule);

    // Keys of each row: JSON (in the compared kind), atoms, completeness.
    let side_key = |row: &[V], side_source: bool| -> (String, Option<Vec<KeyAtom>>) {
        let parts: Vec<(&str, &V, &DataType, &Kind)> = keys
            .iter()
            .map(|k| {
                let (i, t) = if side_source {
                    (k.si, &k.ts)
                } else {
                    (k.ri, &k.tr)
                };
                (k.source.as_str(), &row[i], t, &k.kind)
            })
            .collect();
        let json = key_json(&parts);
        let atoms = if parts.iter().any(|p| p.1.is_null()) {
            None
        } else {
            Some(parts.iter().map(|p| key_atom(p.1, p.2, p.3)).collect())
        };
        (json, atoms)
    };

    let mut dq = Vec::new();
    let mut excluded = std::collections::BTreeSet::new();
    // live rows by key
    let mut live: [BTreeMap<Vec<KeyAtom>, (String, usize)>; 2] = [BTreeMap::new(), BTreeMap::new()];
    for (side, table) in [s, r].into_iter().enumerate() {
        let is_source = side == 0;
        let mut nulls: BTreeMap<String, u64> = BTreeMap::new();
        let mut counts: BTreeMap<Vec<KeyAtom>, (String, u64)> = BTreeMap::new();
        for row in &table.rows {
            let (json, atoms) = side_key(row, is_source);
            match atoms {
                None => *nulls.entry(json).or_default() += 1,
                Some(a) => counts.entry(a).or_insert((json, 0)).1 += 1,
            }
        }
        let reason = if is_source { "in_source" } else { "in_replica" };
        let mut push = |kind: &str, key: String, n: u64| {
            let n = Some(n.to_string());
            dq.push(Disc {
                key,
                kind: kind.into(),
                field: None,
                source_value: if is_source { n.clone() } else { None },
                replica_value: if is_source { None } else { n },
                owner: None,
                action: "report_only".into(),
                reason: Some(reason.into()),
                delta: None,
                corrected_by: None,
            });
        };
        for (json, n) in nulls {
            push("null_key", json, n);
        }
        for (atoms, (json, n)) in counts {
            if n > 1 {
                push("duplicate_key", json, n);
                excluded.insert(atoms);
            }
        }
    }
    for (side, table) in [s, r].into_iter().enumerate() {
        let soft = if side == 0 { s_soft } else { r_soft };
        for (i, row) in table.rows.iter().enumerate() {
            let (json, atoms) = side_key(row, side == 0);
            let Some(atoms) = atoms else { continue };
            if excluded.contains(&atoms) || soft_deleted(row, soft, deleted_value) {
                continue;
            }
            live[side].insert(atoms, (json, i));
        }
    }

    // Payload columns per corrected system.
    let mut replica_payload: Vec<(String, DataType)> = mapped
        .iter()
        .map(|m| (m.replica.clone(), m.tr.clone()))
        .collect();
    if let Some((n, _, t)) = &extra_soft {
        replica_payload.push((n.clone(), t.clone()));
    }
    let source_payload: Vec<(String, DataType)> = mapped
        .iter()
        .map(|m| (m.source.clone(), m.ts.clone()))
        .collect();
    let current_replica = |row: &[V]| -> Vec<(String, V)> {
        let mut v: Vec<(String, V)> = mapped
            .iter()
            .map(|m| (m.replica.clone(), row[m.ri].clone()))
            .collect();
        if let Some((n, i, _)) = &extra_soft {
            v.push((n.clone(), row[*i].clone()));
        }
        v
    };
    let current_source = |row: &[V]| -> Vec<(String, V)> {
        mapped
            .iter()
            .map(|m| (m.source.clone(), row[m.si].clone()))
            .collect()
    };
    let nulls_of = |payload: &[(String, DataType)]| -> Vec<(String, V)> {
        payload.iter().map(|(n, _)| (n.clone(), V::Null)).collect()
    };
    let set = |vals: &mut Vec<(String, V)>, name: &str, v: V| {
        vals.iter_mut()
            .find(|(n, _)| n == name)
            .expect("payload column")
            .1 = v;
    };

    let mut discs = Vec::new();
    let mut rep_corr = Vec::new();
    let mut src_corr = Vec::new();
    let all_keys: std::collections::BTreeSet<&Vec<KeyAtom>> =
        live[0].keys().chain(live[1].keys()).collect();
    let row_disc =
        |key: &str, kind: &str, action: &str, reason: Option<&str>, by: Option<&str>| Disc {
            key: key.into(),
            kind: kind.into(),
            field: None,
            source_value: None,
            replica_value: None,
            owner: Some("source".into()),
            action: action.into(),
            reason: reason.map(str::to_string),
            delta: None,
            corrected_by: by.map(|op| (REPLICA.to_string(), op.to_string())),
        };
    for k in all_keys {
        match (live[0].get(k), live[1].get(k)) {
            (Some((json, si)), None) => {
                let row = &s.rows[*si];
                let mut vals = nulls_of(&replica_payload);
                // The first column (keys first) the replica cannot hold the value of.
                let mut lost: Option<String> = None;
                for m in &mapped {
                    match convert(&row[m.si], &m.ts, &m.tr) {
                        Some(v) => set(&mut vals, &m.replica, v),
                        None => {
                            lost.get_or_insert_with(|| m.source.clone());
                        }
                    }
                }
                let mut changed: Vec<String> = mapped
                    .iter()
                    .filter(|m| !m.is_key)
                    .map(|m| m.replica.clone())
                    .collect();
                if let Some((n, _, t)) = &extra_soft {
                    set(&mut vals, n, soft_marker(t, deleted_value, false));
                    changed.push(n.clone());
                }
                if lost.is_none() {
                    discs.push(row_disc(
                        json,
                        "missing_in_replica",
                        "correct_replica",
                        None,
                        Some("insert"),
                    ));
                    rep_corr.push(Corr {
                        key: json.clone(),
                        op: "insert".into(),
                        changed,
                        values: vals,
                        expected: None,
                    });
                } else {
                    // Withheld whole: reported with the first column that cannot hold
                    // its value (README, "Corrections are exact or absent").
                    let mut d = row_disc(
                        json,
                        "missing_in_replica",
                        "report_only",
                        Some("unrepresentable"),
                        None,
                    );
                    d.field = lost;
                    discs.push(d);
                }
            }
            (None, Some((json, ri))) => {
                let row = &r.rows[*ri];
                let op = match &e.deletes {
                    Deletes::Hard => Some("delete"),
                    Deletes::Soft { .. } => Some("soft_delete"),
                    Deletes::Report => None,
                };
                let action = if op.is_some() {
                    "correct_replica"
                } else {
                    "report_only"
                };
                discs.push(row_disc(json, "extra_in_replica", action, None, op));
                if let Some(op) = op {
                    let mut vals = nulls_of(&replica_payload);
                    for m in keys.iter() {
                        set(&mut vals, &m.replica, row[m.ri].clone());
                    }
                    let mut changed = vec![];
                    if op == "soft_delete" {
                        let (i, t) = r_soft.unwrap();
                        let n = r.names[i].clone();
                        set(&mut vals, &n, soft_marker(t, deleted_value, true));
                        changed.push(n);
                    }
                    rep_corr.push(Corr {
                        key: json.clone(),
                        op: op.into(),
                        changed,
                        values: vals,
                        expected: Some(current_replica(row)),
                    });
                }
            }
            (Some((json, si)), Some((_, ri))) => {
                let (srow, rrow) = (&s.rows[*si], &r.rows[*ri]);
                // (field disc, corrected side: Some(true)=replica, Some(false)=source)
                let mut found: Vec<(Disc, Option<bool>, &Mapped)> = Vec::new();
                for m in &fields {
                    let rule = rule_of(m);
                    let (a, b) = (&srow[m.si], &rrow[m.ri]);
                    let Some(reason) = compare(a, &m.ts, b, &m.tr, &m.kind, rule) else {
                        continue;
                    };
                    let corrected = match &rule.owner {
                        Owner::Source => Some(true),
                        Owner::Replica => Some(false),
                        Owner::None => None,
                        Owner::Newest(by) => {
                            let bm = mapped.iter().find(|x| &x.source == by).expect("by mapped");
                            Some(!later(&srow[bm.si], &bm.ts, &rrow[bm.ri], &bm.tr, &bm.kind))
                        }
                    };
                    let numeric = matches!(m.kind, Kind::Float | Kind::Int | Kind::Dec(_));
                    let d = Disc {
                        key: json.clone(),
                        kind: "field_mismatch".into(),
                        field: Some(m.source.clone()),
                        source_value: text(a, &m.ts, &m.kind),
                        replica_value: text(b, &m.tr, &m.kind),
                        owner: Some(rule.owner.name().into()),
                        action: match corrected {
                            Some(true) => "correct_replica",
                            Some(false) => "correct_source",
                            None => "report_only",
                        }
                        .into(),
                        reason: Some(reason.into()),
                        delta: if numeric { delta(a, b, &m.kind) } else { None },
                        corrected_by: None,
                    };
                    found.push((d, corrected, m));
                }
                for to_replica in [true, false] {
                    let (payload, current, row_from, list) = if to_replica {
                        (&replica_payload, current_replica(rrow), srow, &mut rep_corr)
                    } else {
                        (&source_payload, current_source(srow), rrow, &mut src_corr)
                    };
                    let mut vals = nulls_of(payload);
                    for kcol in keys.iter() {
                        let (n, v) = if to_replica {
                            (&kcol.replica, &rrow[kcol.ri])
                        } else {
                            (&kcol.source, &srow[kcol.si])
                        };
                        set(&mut vals, n, v.clone());
                    }
                    let mut changed = Vec::new();
                    for (d, corrected, m) in found.iter_mut() {
                        if *corrected != Some(to_replica) {
                            continue;
                        }
                        let (from_v, from_t, to_t, name) = if to_replica {
                            (&row_from[m.si], &m.ts, &m.tr, &m.replica)
                        } else {
                            (&row_from[m.ri], &m.tr, &m.ts, &m.source)
                        };
                        match convert(from_v, from_t, to_t) {
                            Some(v) => {
                                set(&mut vals, name, v);
                                changed.push(name.clone());
                                let system = if to_replica { REPLICA } else { SOURCE };
                                d.corrected_by = Some((system.into(), "update".into()));
                            }
                            None => {
                                d.reason = Some("unrepresentable".into());
                                d.action = "report_only".into();
                            }
                        }
                    }
                    if !changed.is_empty() {
                        list.push(Corr {
                            key: json.clone(),
                            op: "update".into(),
                            changed,
                            values: vals,
                            expected: Some(current),
                        });
                    }
                }
                discs.extend(found.into_iter().map(|(d, ..)| d));
            }
            (None, None) => unreachable!(),
        }
    }
    discs.extend(dq);
    // Counts per kind and field; a withheld insert's field says only why.
    for d in &discs {
        let field = (d.kind == "field_mismatch")
            .then(|| d.field.clone())
            .flatten();
        *out.counts.entry((d.kind.clone(), field)).or_default() += 1;
    }
    for (system, list) in [(REPLICA, &rep_corr), (SOURCE, &src_corr)] {
        for c in list {
            *out.ops
                .entry((system.to_string(), c.op.clone()))
                .or_default() += 1;
        }
    }
    out.discrepancies = discs;
    if !rep_corr.is_empty() {
        out.corrections.insert(REPLICA.into(), rep_corr);
    }
    if !src_corr.is_empty() {
        out.corrections.insert(SOURCE.into(), src_corr);
    }
    out.payload.insert(REPLICA.into(), replica_payload);
    out.payload.insert(SOURCE.into(), source_payload);
    out
}

/// Key JSON of a correction row, from its key columns in the corrected system's types.
pub fn correction_key(mapped: &[Mapped], row: &[(String, V)], to_replica: bool) -> String {
    let parts: Vec<(String, V, DataType, Kind)> = mapped
        .iter()
        .filter(|m| m.is_key)
        .map(|m| {
            let (name, t) = if to_replica {
                (&m.replica, &m.tr)
            } else {
                (&m.source, &m.ts)
            };
            let v = row
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or(V::Null);
            (m.source.clone(), v, t.clone(), m.kind.clone())
        })
        .collect();
    key_json(
        &parts
            .iter()
            .map(|(n, v, t, k)| (n.as_str(), v, t, k))
            .collect::<Vec<_>>(),
    )
}
