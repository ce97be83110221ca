//! The type rules: in which common type two columns compare ([`common_type`], never
//! casting a value down), which casts hold every value ([`holds_all`]), and the small
//! helpers the plan and the classifier share about types.

use arrow::datatypes::{DataType, TimeUnit};

/// Whether `to` holds every value of `from` exactly, so a plain cast never rounds,
/// overflows or fails: the same type, a wider integer, another string or variable
/// binary layout, a wider float, a decimal with at least as many integer and fraction
/// digits, a date as Date64.
pub fn holds_all(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let int_bits = |t: &DataType| -> Option<(bool, u32)> {
        Some(match t {
            Int8 => (true, 8),
            Int16 => (true, 16),
            Int32 => (true, 32),
            Int64 => (true, 64),
            UInt8 => (false, 8),
            UInt16 => (false, 16),
            UInt32 => (false, 32),
            UInt64 => (false, 64),
            _ => return None,
        })
    };
    let digits = |t: &DataType| -> Option<(i16, i16)> {
        match t {
            Decimal128(p, s) | Decimal256(p, s) => Some((*p as i16 - *s as i16, *s as i16)),
            t => int_bits(t).map(|(signed, bits)| {
                let digits = match (signed, bits) {
                    (_, 8) => 3,
                    (_, 16) => 5,
                    (_, 32) => 10,
                    (true, _) => 19,
                    (false, _) => 20,
                };
                (digits, 0)
            }),
        }
    };
    if from == to {
        return true;
    }
    if let DataType::Dictionary(_, values) = from {
        // A dictionary's values cast out of it; into a dictionary may overflow its keys.
        return !matches!(to, DataType::Dictionary(..)) && holds_all(values, to);
    }
    match (from, to) {
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (
            Binary | LargeBinary | BinaryView | FixedSizeBinary(_),
            Binary | LargeBinary | BinaryView,
        ) => true,
        (Float16, Float32 | Float64) | (Float32, Float64) => true,
        (Date32, Date64) => true,
        (Decimal128(..) | Decimal256(..), Decimal128(..) | Decimal256(..)) => {
            let ((fi, fs), (ti, ts)) =
                (digits(from).expect("decimal"), digits(to).expect("decimal"));
            ti >= fi && ts >= fs
        }
        (f, t) if int_bits(f).is_some() && int_bits(t).is_some() => {
            let ((fs, fb), (ts, tb)) = (int_bits(f).expect("int"), int_bits(t).expect("int"));
            (fs == ts && tb >= fb) || (!fs && ts && tb > fb)
        }
        (f, Decimal128(..) | Decimal256(..)) if int_bits(f).is_some() => {
            let ((fi, _), (ti, _)) = (digits(f).expect("int"), digits(to).expect("decimal"));
            ti >= fi
        }
        _ => false,
    }
}

pub fn is_numeric(t: &DataType) -> bool {
    t.is_integer()
        || t.is_floating()
        || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))
}

/// The type two columns are compared in, or `None` if they cannot be compared by value.
/// It always holds every value of both sides: nothing is cast down. Dictionary-encoded
/// columns compare as their values. Integers of any width compare as Int64 (UInt64, and
/// UInt64 against any signed type, as Decimal(20,0)); decimals at the larger scale, as
/// Decimal256 when 38 digits do not hold both; integers against decimals as decimals;
/// any float makes Float64; string layouts unify, as do binary layouts (fixed-size
/// binary, such as UUIDs, included); dates compare as Date64 when either side is one;
/// times, durations and timestamps at the finer unit, timestamps in UTC when either side
/// has a zone (naive values are taken as UTC). Intervals compare only with the same
/// interval type. Nested types (struct, list, map) are not compared. The key summary
/// sees the common type as its [`crate::snapshot::scan_type`].
pub fn common_type(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    let (a, b) = (value_type(a), value_type(b));
    if is_nested(a) || is_nested(b) {
        return None;
    }
    // (integer digits, scale) of an exact number.
    let digits = |t: &DataType| -> Option<(i16, i16)> {
        match t {
            UInt64 => Some((20, 0)),
            t if t.is_integer() => Some((19, 0)),
            Decimal128(p, s) | Decimal256(p, s) => Some((*p as i16 - *s as i16, *s as i16)),
            _ => None,
        }
    };
    Some(match (a, b) {
        _ if a == b => match a {
            Float16 | Float32 => Float64,
            Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32 => Int64,
            UInt64 => Decimal128(20, 0),
            // One rendering of an instant, whatever zone both sides were written in.
            Timestamp(unit, Some(_)) => Timestamp(*unit, Some("UTC".into())),
            other => other.clone(),
        },
        (a, b) if a.is_floating() && is_numeric(b) || b.is_floating() && is_numeric(a) => Float64,
        (a, b) if a.is_integer() && b.is_integer() && *a != UInt64 && *b != UInt64 => Int64,
        (a, b) if is_numeric(a) && is_numeric(b) => {
            let (ia, sa) = digits(a)?;
            let (ib, sb) = digits(b)?;
            let s = sa.max(sb).max(0);
            let p = (ia.max(ib) + s).max(1);
            if p <= 38 {
                Decimal128(p as u8, s as i8)
            } else if p <= 76 {
                Decimal256(p as u8, s as i8)
            } else {
                return None;
            }
        }
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => Utf8,
        (
            Binary | LargeBinary | BinaryView | FixedSizeBinary(_),
            Binary | LargeBinary | BinaryView | FixedSizeBinary(_),
        ) => Binary,
        (Timestamp(ua, za), Timestamp(ub, zb)) => {
            let unit = finer(*ua, *ub);
            let zone = if za.is_some() || zb.is_some() {
                Some("UTC".into())
            } else {
                None
            };
            Timestamp(unit, zone)
        }
        (Date32 | Date64, Date32 | Date64) => Date64,
        (Time32(ua) | Time64(ua), Time32(ub) | Time64(ub)) => match finer(*ua, *ub) {
            u @ (TimeUnit::Second | TimeUnit::Millisecond) => Time32(u),
            u => Time64(u),
        },
        (Duration(ua), Duration(ub)) => Duration(finer(*ua, *ub)),
        _ => return None,
    })
}

/// The type of a column's values: a dictionary's value type, any other type itself.
pub fn value_type(t: &DataType) -> &DataType {
    match t {
        DataType::Dictionary(_, v) => value_type(v),
        t => t,
    }
}

/// Struct, list and map columns: not compared (see [`common_type`]).
pub fn is_nested(t: &DataType) -> bool {
    t.is_nested()
}

pub fn unit_name(u: TimeUnit) -> &'static str {
    match u {
        TimeUnit::Second => "seconds",
        TimeUnit::Millisecond => "milliseconds",
        TimeUnit::Microsecond => "microseconds",
        TimeUnit::Nanosecond => "nanoseconds",
    }
}

pub fn finer(a: TimeUnit, b: TimeUnit) -> TimeUnit {
    fn rank(u: TimeUnit) -> u8 {
        match u {
            TimeUnit::Second => 0,
            TimeUnit::Millisecond => 1,
            TimeUnit::Microsecond => 2,
            TimeUnit::Nanosecond => 3,
        }
    }
    if rank(a) >= rank(b) { a } else { b }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use std::sync::Arc;

    #[test]
    fn common_types() {
        use DataType::*;
        assert_eq!(common_type(&Int32, &Int64), Some(Int64));
        assert_eq!(
            common_type(&Decimal128(10, 2), &Decimal128(14, 4)),
            Some(Decimal128(14, 4))
        );
        assert_eq!(
            common_type(&Int64, &Decimal128(10, 2)),
            Some(Decimal128(21, 2))
        );
        assert_eq!(common_type(&Float32, &Decimal128(10, 2)), Some(Float64));
        assert_eq!(
            common_type(
                &Timestamp(TimeUnit::Millisecond, None),
                &Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
            ),
            Some(Timestamp(TimeUnit::Microsecond, Some("UTC".into())))
        );
        assert_eq!(common_type(&Utf8, &Int64), None);
        assert_eq!(common_type(&Utf8View, &Utf8), Some(Utf8));
    }

    #[test]
    fn common_types_hold_both_sides() {
        use DataType::*;
        let dict = |v: DataType| Dictionary(Box::new(Int32), Box::new(v));
        assert_eq!(common_type(&dict(Utf8), &Utf8View), Some(Utf8));
        assert_eq!(common_type(&dict(Int16), &Int64), Some(Int64));
        assert_eq!(common_type(&UInt64, &Int64), Some(Decimal128(20, 0)));
        assert_eq!(
            common_type(&Decimal128(38, 0), &Decimal128(38, 10)),
            Some(Decimal256(48, 10))
        );
        assert_eq!(
            common_type(&Decimal256(50, 2), &Int64),
            Some(Decimal256(50, 2))
        );
        assert_eq!(common_type(&Date32, &Date64), Some(Date64));
        assert_eq!(
            common_type(&Time32(TimeUnit::Second), &Time64(TimeUnit::Nanosecond)),
            Some(Time64(TimeUnit::Nanosecond))
        );
        assert_eq!(common_type(&FixedSizeBinary(16), &Binary), Some(Binary));
        let list = List(Arc::new(arrow::datatypes::Field::new("item", Int64, true)));
        assert_eq!(common_type(&list, &list), None);
    }

    #[test]
    fn holds_all_only_when_no_value_is_lost() {
        use DataType::*;
        assert!(holds_all(&Int32, &Int64));
        assert!(holds_all(&UInt32, &Int64));
        assert!(!holds_all(&UInt64, &Int64));
        assert!(!holds_all(&Int64, &Int32));
        assert!(!holds_all(&Int8, &UInt64));
        assert!(holds_all(&Int64, &Decimal128(19, 0)));
        assert!(!holds_all(&Int64, &Decimal128(18, 0)));
        assert!(holds_all(&Decimal128(10, 2), &Decimal128(12, 4)));
        assert!(!holds_all(&Decimal128(10, 4), &Decimal128(10, 2)));
        assert!(!holds_all(&Float64, &Float32));
        assert!(!holds_all(&Float64, &Int64));
        assert!(!holds_all(&Int64, &Float64));
        assert!(!holds_all(
            &Timestamp(TimeUnit::Nanosecond, None),
            &Timestamp(TimeUnit::Microsecond, None)
        ));
    }

    #[test]
    fn cast_type_names_round_trip() {
        for t in [
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            DataType::Decimal128(21, 2),
            DataType::Utf8,
        ] {
            assert_eq!(DataType::from_str(&t.to_string()).unwrap(), t);
        }
    }
}
