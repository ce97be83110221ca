//! Random cases from a seed (a splitmix64 generator of our own) and a shrinker that
//! makes a failing case minimal while it keeps failing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arrow::datatypes::{DataType, TimeUnit, i256};

use super::reference::{V, convert, day_number, lit};

/// splitmix64.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn range(&mut self, lo: i128, hi: i128) -> i128 {
        // span 0 is the whole range of i128.
        let span = (hi.wrapping_sub(lo) as u128).wrapping_add(1);
        let raw = (self.next() as u128) << 64 | self.next() as u128;
        let r = if span == 0 { raw } else { raw % span };
        lo.wrapping_add(r as i128)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    pub fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize].clone()
    }
}

/// Mixes a base seed and a case number into a case seed.
pub fn case_seed(base: u64, index: u64) -> u64 {
    let mut r = Rng::new(base ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.next()
}

/// The riskier classes of cases, each behind a switch (see `Classes::default`).
#[derive(Clone, Copy, Debug)]
pub struct Classes {
    /// Dictionary(Int32, …) columns, on keys and fields.
    pub dictionary: bool,
    pub date64: bool,
    pub decimal256: bool,
    pub float16: bool,
    /// FixedSizeBinary(16) (UUIDs).
    pub fixed_binary: bool,
    pub binary_view: bool,
    /// UInt64 values above i64::MAX against Int64 columns.
    pub u64_above_i64: bool,
    /// Values that do not fit the corrected column (wider ints, more decimal places,
    /// finer timestamps, floats into integer columns).
    pub unrepresentable: bool,
    /// A soft-delete column the source does not have.
    pub soft_replica_only: bool,
    /// Decimal keys of differing scales, zoned against naive timestamp keys.
    pub mixed_key_types: bool,
    /// Float columns against decimal columns.
    pub float_vs_decimal: bool,
    /// Integer and decimal values above 2^53 (numeric_delta rounding).
    pub huge_numbers: bool,
    /// Float tolerances at the boundary (decision 1: no slack).
    pub float_tolerance_boundary: bool,
    /// Boolean non-key fields.
    pub boolean_fields: bool,
    /// Soft-delete timestamp columns with a non-UTC zone.
    pub soft_zoned: bool,
    /// Timestamp columns with a fixed non-UTC zone (`+02:00`, `-05:00`).
    pub non_utc_zones: bool,
    /// Keys that occur more than once on a side.
    pub duplicate_keys: bool,
    /// Rows with a NULL key part.
    pub null_keys: bool,
    /// NaN float values.
    pub nan: bool,
    /// An entity whose source snapshot has no rows.
    pub empty_source: bool,
    /// Files of several rows (off: a row per file, plus empty files). A field constant
    /// throughout a file once reached recon's functions as a single value.
    pub multi_row_files: bool,
    /// NULLs in compared fields.
    pub field_nulls: bool,
    /// numeric_delta of integer and decimal fields checked exactly (the exact difference
    /// rounded once); off: only whether there is one.
    pub exact_delta: bool,
}

impl Default for Classes {
    /// What `make test` runs: every class.
    fn default() -> Self {
        Classes::all()
    }
}

impl Classes {
    pub fn all() -> Self {
        Classes {
            dictionary: true,
            date64: true,
            decimal256: true,
            float16: true,
            fixed_binary: true,
            binary_view: true,
            u64_above_i64: true,
            unrepresentable: true,
            soft_replica_only: true,
            mixed_key_types: true,
            float_vs_decimal: true,
            huge_numbers: true,
            float_tolerance_boundary: true,
            boolean_fields: true,
            soft_zoned: true,
            non_utc_zones: true,
            duplicate_keys: true,
            null_keys: true,
            nan: true,
            empty_source: true,
            multi_row_files: true,
            field_nulls: true,
            exact_delta: true,
        }
    }
    /// Each switch named `RECON_FUZZ_<NAME>` set to 0 or 1 overrides the default.
    pub fn from_env() -> Self {
        let mut c = Classes::default();
        let set = |name: &str, flag: &mut bool| {
            if let Ok(v) = std::env::var(format!("RECON_FUZZ_{name}")) {
                *flag = v == "1";
            }
        };
        set("DICTIONARY", &mut c.dictionary);
        set("DATE64", &mut c.date64);
        set("DECIMAL256", &mut c.decimal256);
        set("FLOAT16", &mut c.float16);
        set("FIXED_BINARY", &mut c.fixed_binary);
        set("BINARY_VIEW", &mut c.binary_view);
        set("U64_ABOVE_I64", &mut c.u64_above_i64);
        set("UNREPRESENTABLE", &mut c.unrepresentable);
        set("SOFT_REPLICA_ONLY", &mut c.soft_replica_only);
        set("MIXED_KEY_TYPES", &mut c.mixed_key_types);
        set("FLOAT_VS_DECIMAL", &mut c.float_vs_decimal);
        set("HUGE_NUMBERS", &mut c.huge_numbers);
        set("FLOAT_TOLERANCE_BOUNDARY", &mut c.float_tolerance_boundary);
        set("BOOLEAN_FIELDS", &mut c.boolean_fields);
        set("SOFT_ZONED", &mut c.soft_zoned);
        set("NON_UTC_ZONES", &mut c.non_utc_zones);
        set("DUPLICATE_KEYS", &mut c.duplicate_keys);
        set("NULL_KEYS", &mut c.null_keys);
        set("NAN", &mut c.nan);
        set("EMPTY_SOURCE", &mut c.empty_source);
        set("MULTI_ROW_FILES", &mut c.multi_row_files);
        set("FIELD_NULLS", &mut c.field_nulls);
        set("EXACT_DELTA", &mut c.exact_delta);
        c
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Presence {
    Both,
    SourceOnly,
    ReplicaOnly,
}

/// One column: its names and types on both sides.
#[derive(Clone, Debug)]
pub struct ColSpec {
    pub source: String,
    pub replica: String,
    pub ts: DataType,
    pub tr: DataType,
    pub null_s: bool,
    pub null_r: bool,
    pub presence: Presence,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub enum Owner {
    #[default]
    Source,
    Replica,
    None,
    Newest(String),
}

impl Owner {
    pub fn name(&self) -> &'static str {
        match self {
            Owner::Source => "source",
            Owner::Replica => "replica",
            Owner::None => "none",
            Owner::Newest(_) => "newest",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rule {
    pub compare: Vec<String>,
    pub abs_tol: Option<f64>,
    pub rel_tol: Option<f64>,
    pub precision: Option<String>,
    pub ignore: bool,
    pub owner: Owner,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Deletes {
    Hard,
    Report,
    Soft {
        column: String,
        deleted_value: Option<bool>,
    },
}

#[derive(Clone, Debug)]
pub struct EntityCase {
    pub name: String,
    pub cols: Vec<ColSpec>,
    pub key: Vec<String>,
    pub rules: BTreeMap<String, Rule>,
    pub deletes: Deletes,
    /// Rows over every column (NULL where the side lacks it), in each side's types.
    pub source_rows: Vec<Vec<V>>,
    pub replica_rows: Vec<Vec<V>>,
    /// Which file each row goes to, and how many files (some may be empty).
    pub source_file_of: Vec<usize>,
    pub replica_file_of: Vec<usize>,
    pub source_files: usize,
    pub replica_files: usize,
    pub row_group: usize,
}

impl EntityCase {
    pub fn rename(&self) -> BTreeMap<String, String> {
        self.cols
            .iter()
            .filter(|c| c.presence == Presence::Both && c.source != c.replica)
            .map(|c| (c.source.clone(), c.replica.clone()))
            .collect()
    }

    pub fn toml(&self) -> String {
        let mut t = String::new();
        writeln!(t, "[[entities]]\nname = \"{}\"", self.name).unwrap();
        let keys: Vec<String> = self.key.iter().map(|k| format!("\"{k}\"")).collect();
        writeln!(t, "key = [{}]", keys.join(", ")).unwrap();
        match &self.deletes {
            Deletes::Hard => writeln!(t, "deletes = {{ policy = \"hard\" }}").unwrap(),
            Deletes::Report => writeln!(t, "deletes = {{ policy = \"report\" }}").unwrap(),
            Deletes::Soft {
                column,
                deleted_value,
            } => {
                let dv = deleted_value
                    .map(|v| format!(", deleted_value = {v}"))
                    .unwrap_or_default();
                writeln!(
                    t,
                    "deletes = {{ policy = \"soft\", column = \"{column}\"{dv} }}"
                )
                .unwrap()
            }
        }
        let rename = self.rename();
        if !rename.is_empty() {
            let parts: Vec<String> = rename
                .iter()
                .map(|(a, b)| format!("{a} = \"{b}\""))
                .collect();
            writeln!(t, "rename = {{ {} }}", parts.join(", ")).unwrap();
        }
        for (name, r) in &self.rules {
            if *r == Rule::default() {
                continue;
            }
            let mut parts = Vec::new();
            if !r.compare.is_empty() {
                let c: Vec<String> = r.compare.iter().map(|c| format!("\"{c}\"")).collect();
                parts.push(format!("compare = [{}]", c.join(", ")));
            }
            if let Some(x) = r.abs_tol {
                parts.push(format!("abs_tol = {x:?}"));
            }
            if let Some(x) = r.rel_tol {
                parts.push(format!("rel_tol = {x:?}"));
            }
            if let Some(p) = &r.precision {
                parts.push(format!("precision = \"{p}\""));
            }
            if r.ignore {
                parts.push("ignore = true".into());
            }
            match &r.owner {
                Owner::Source => {}
                Owner::Newest(by) => parts.push(format!("owner = \"newest\", by = \"{by}\"")),
                o => parts.push(format!("owner = \"{}\"", o.name())),
            }
            writeln!(t, "fields.{name} = {{ {} }}", parts.join(", ")).unwrap();
        }
        t
    }

    /// Both sides' columns and rows, for a failure report.
    pub fn describe(&self) -> String {
        let mut t = String::new();
        for (side, rows, files) in [
            ("source", &self.source_rows, &self.source_file_of),
            ("replica", &self.replica_rows, &self.replica_file_of),
        ] {
            let cols: Vec<(usize, &ColSpec)> = self
                .cols
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.presence == Presence::Both
                        || (side == "source") == (c.presence == Presence::SourceOnly)
                })
                .collect();
            writeln!(t, "  {side} snapshot of `{}`:", self.name).unwrap();
            for (_, c) in &cols {
                let (n, ty, null) = if side == "source" {
                    (&c.source, &c.ts, c.null_s)
                } else {
                    (&c.replica, &c.tr, c.null_r)
                };
                writeln!(t, "    {n}: {ty}{}", if null { "" } else { " NOT NULL" }).unwrap();
            }
            for (row, f) in rows.iter().zip(files) {
                let cells: Vec<String> = cols.iter().map(|(i, _)| lit(&row[*i])).collect();
                writeln!(t, "    file {f}: ({})", cells.join(", ")).unwrap();
            }
        }
        t
    }
}

#[derive(Clone, Debug)]
pub struct Case {
    pub seed: u64,
    pub entities: Vec<EntityCase>,
}

impl Case {
    pub fn toml(&self, output: &str) -> String {
        let mut t = format!(
            "[job]\nname = \"fuzz\"\nlake = \"lake\"\noutput = \"{output}\"\n\n\
             [systems]\nsource = \"{}\"\nreplica = \"{}\"\n\n\
             [guardrails]\nmax_correction_share = 1.0\n\n",
            super::reference::SOURCE,
            super::reference::REPLICA
        );
        for e in &self.entities {
            t.push_str(&e.toml());
            t.push('\n');
        }
        t
    }
    pub fn describe(&self) -> String {
        let mut t = format!("case seed {:#x}\n--- job.toml ---\n", self.seed);
        t.push_str(&self.toml("out"));
        t.push_str("--- snapshots ---\n");
        for e in &self.entities {
            t.push_str(&e.describe());
        }
        t
    }
}

// ---------------------------------------------------------------------------------------
// Generation.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    Int,
    Dec,
    Float,
    Text,
    Bin,
    Bool,
    Date,
    Ts,
}

/// A column pair and the values both sides can hold.
#[derive(Clone, Debug)]
struct Pair {
    family: Family,
    ts: DataType,
    tr: DataType,
    /// The type values are generated in (see [`logical_value`]).
    logical: DataType,
    /// Int: [lo, hi]; Dec: digits (total) at the logical scale; Float: integer bound.
    lo: i128,
    hi: i128,
    /// Float: values k / 2^frac_bits; `None`: any double (f32 rounding applied).
    frac_bits: Option<u32>,
    /// Ts: the step (ns) values are multiples of.
    step: i128,
}

fn int_range(t: &DataType) -> (i128, i128) {
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
}

const INTS: [DataType; 8] = [
    DataType::Int8,
    DataType::Int16,
    DataType::Int32,
    DataType::Int64,
    DataType::UInt8,
    DataType::UInt16,
    DataType::UInt32,
    DataType::UInt64,
];

fn unit_ns(u: TimeUnit) -> i128 {
    match u {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

const UNITS: [TimeUnit; 4] = [
    TimeUnit::Second,
    TimeUnit::Millisecond,
    TimeUnit::Microsecond,
    TimeUnit::Nanosecond,
];

fn decimal(rng: &mut Rng, c: &Classes) -> DataType {
    let p = rng.pick(&[5u8, 9, 12, 18, 38]);
    let s = rng.below(p.min(6) as u64 + 1) as i8;
    if c.decimal256 && rng.chance(0.2) {
        DataType::Decimal256(p.max(20), s)
    } else {
        DataType::Decimal128(p, s)
    }
}

fn dec_parts(t: &DataType) -> (i32, i32) {
    match t {
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => (*p as i32, *s as i32),
        DataType::Int8 => (2, 0),
        DataType::Int16 => (4, 0),
        DataType::Int32 => (9, 0),
        DataType::Int64 => (18, 0),
        t => panic!("{t}"),
    }
}

fn zone(rng: &mut Rng, c: &Classes) -> Option<std::sync::Arc<str>> {
    let z = rng.pick(&[None, None, Some("UTC"), Some("+02:00"), Some("-05:00")]);
    let z = if c.non_utc_zones { z } else { z.map(|_| "UTC") };
    z.map(std::sync::Arc::from)
}

/// A column pair of `family` (types on both sides, possibly differing).
fn pair(rng: &mut Rng, family: Family, c: &Classes, key: bool) -> Pair {
    let mut p = Pair {
        family,
        ts: DataType::Null,
        tr: DataType::Null,
        logical: DataType::Null,
        lo: 0,
        hi: 0,
        frac_bits: None,
        step: 1,
    };
    match family {
        Family::Int => {
            p.ts = rng.pick(&INTS);
            p.tr = if rng.chance(0.5) {
                p.ts.clone()
            } else {
                rng.pick(&INTS)
            };
            let ((a, b), (x, y)) = (int_range(&p.ts), int_range(&p.tr));
            p.lo = a.max(x);
            p.hi = b.min(y);
            if !c.huge_numbers {
                p.lo = p.lo.max(-(1 << 53));
                p.hi = p.hi.min(1 << 53);
            }
            p.logical = DataType::Int64;
        }
        Family::Dec => {
            let signed = [DataType::Int16, DataType::Int32, DataType::Int64];
            p.ts = decimal(rng, c);
            p.tr = match rng.below(3) {
                0 => p.ts.clone(),
                1 if !key => rng.pick(&signed),
                _ => decimal(rng, c),
            };
            if key && !c.mixed_key_types {
                p.tr = p.ts.clone();
            }
            if rng.chance(0.3) && !key {
                std::mem::swap(&mut p.ts, &mut p.tr);
            }
            let ((pa, sa), (pb, sb)) = (dec_parts(&p.ts), dec_parts(&p.tr));
            let s = sa.min(sb);
            let mut ints = (pa - sa).min(pb - sb);
            if !c.huge_numbers {
                ints = ints.min(15 - s);
            }
            p.lo = s as i128; // logical scale
            p.hi = (ints + s) as i128; // digits
            p.logical = DataType::Decimal256(76, s as i8);
        }
        Family::Float => {
            let floats = if c.float16 {
                vec![DataType::Float32, DataType::Float64, DataType::Float16]
            } else {
                vec![DataType::Float32, DataType::Float64]
            };
            p.ts = rng.pick(&floats);
            p.logical = DataType::Float64;
            match rng.below(6) {
                0 => {
                    p.tr = rng.pick(&[DataType::Int32, DataType::Int64, DataType::Int16]);
                    p.frac_bits = Some(0);
                    p.lo = -(1 << 14);
                    p.hi = 1 << 14;
                }
                1 if c.float_vs_decimal => {
                    p.tr = decimal(rng, c);
                    let (pp, s) = dec_parts(&p.tr);
                    p.frac_bits = Some(match s {
                        0 => 0,
                        1 => 1,
                        _ => 2,
                    });
                    let ints = (pp - s).clamp(0, 6);
                    p.hi = 10i128.pow(ints as u32) - 1;
                    p.lo = -p.hi;
                }
                _ => p.tr = rng.pick(&floats),
            }
            if p.frac_bits.is_none() && (p.ts == DataType::Float16 || p.tr == DataType::Float16) {
                p.frac_bits = Some(4);
                p.hi = 1000;
                p.lo = -1000;
            }
            if rng.chance(0.3) {
                std::mem::swap(&mut p.ts, &mut p.tr);
            }
        }
        Family::Text => {
            let mut layouts = vec![DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View];
            if c.dictionary {
                layouts.push(DataType::Dictionary(
                    Box::new(DataType::Int32),
                    Box::new(DataType::Utf8),
                ));
            }
            p.ts = rng.pick(&layouts);
            p.tr = rng.pick(&layouts);
            p.logical = DataType::Utf8;
        }
        Family::Bin => {
            let mut layouts = vec![DataType::Binary, DataType::LargeBinary];
            if c.binary_view {
                layouts.push(DataType::BinaryView);
            }
            p.ts = rng.pick(&layouts);
            p.tr = rng.pick(&layouts);
            if c.fixed_binary && rng.chance(0.3) {
                p.ts = DataType::FixedSizeBinary(16);
                p.tr = if rng.chance(0.5) {
                    DataType::FixedSizeBinary(16)
                } else {
                    rng.pick(&layouts)
                };
                p.lo = 16; // fixed length
            }
            p.logical = DataType::Binary;
        }
        Family::Bool => {
            p.ts = DataType::Boolean;
            p.tr = DataType::Boolean;
            p.logical = DataType::Boolean;
        }
        Family::Date => {
            let dates = if c.date64 {
                vec![DataType::Date32, DataType::Date64]
            } else {
                vec![DataType::Date32]
            };
            p.ts = rng.pick(&dates);
            p.tr = rng.pick(&dates);
            p.logical = DataType::Date32;
        }
        Family::Ts => {
            let (ua, ub) = (rng.pick(&UNITS), rng.pick(&UNITS));
            let (mut za, mut zb) = (zone(rng, c), zone(rng, c));
            if rng.chance(0.4) {
                zb = za.clone();
            }
            if key && !c.mixed_key_types {
                za = za.filter(|_| false);
                zb = za.clone();
            }
            p.ts = DataType::Timestamp(ua, za);
            p.tr = DataType::Timestamp(ub, zb);
            p.step = unit_ns(ua).max(unit_ns(ub));
            p.logical = DataType::Timestamp(TimeUnit::Nanosecond, None);
        }
    }
    if c.dictionary && matches!(family, Family::Int | Family::Date) && rng.chance(0.1) {
        p.ts = DataType::Dictionary(Box::new(DataType::Int32), Box::new(p.ts.clone()));
    }
    p
}

const TEXTS: [&str; 20] = [
    "",
    " ",
    "  ",
    "a",
    "A",
    "abc",
    "ABC",
    "Abc",
    " abc",
    "abc ",
    "\tabc\n",
    "Straße",
    "STRASSE",
    "ǅemal",
    "İstanbul",
    "日本語",
    "Ωmega",
    "ωMEGA",
    "null",
    "x y",
];

fn long_text(rng: &mut Rng) -> String {
    let n = 20 + rng.below(300) as usize;
    (0..n).map(|i| if i % 7 == 0 { 'é' } else { 'z' }).collect()
}

/// A random value of the pair's logical type.
fn logical_value(rng: &mut Rng, p: &Pair, c: &Classes) -> V {
    match p.family {
        Family::Int => {
            let (lo, hi) = (p.lo, p.hi);
            match rng.below(10) {
                0 => V::Int(lo),
                1 => V::Int(hi),
                2 => V::Int(if lo < 0 { lo + 1 } else { hi - 1 }),
                3 | 4 => V::Int(rng.range(lo, hi)),
                _ => V::Int(rng.range(lo.max(-20), hi.min(20))),
            }
        }
        Family::Dec => {
            let (s, digits) = (p.lo as i32, p.hi as u32);
            let max = 10i128.pow(digits.min(38)) - 1;
            let m = match rng.below(8) {
                0 => max,
                1 => -max,
                2 | 3 => rng.range(-max, max),
                _ => rng.range(-2000, 2000).clamp(-max, max),
            };
            V::Dec(i256::from_i128(m), s as i8)
        }
        Family::Float => match p.frac_bits {
            Some(bits) => {
                let k = match rng.below(4) {
                    0 => p.hi,
                    1 => p.lo,
                    _ => rng.range(p.lo.max(-200), p.hi.min(200)),
                };
                V::F(k as f64 / (1u64 << bits) as f64)
            }
            None => {
                let x = match rng.below(14) {
                    0 if c.nan => f64::NAN,
                    1 => f64::INFINITY,
                    2 => f64::NEG_INFINITY,
                    3 => -0.0,
                    4 => 0.0,
                    5 => f64::MAX,
                    6 => f64::MIN_POSITIVE,
                    7 => 1e20,
                    8 => 1.0e-7,
                    _ => (rng.range(-100_000, 100_000) as f64) / 100.0,
                };
                V::F(round_to(x, p))
            }
        },
        Family::Text => {
            if rng.chance(0.05) {
                V::Str(long_text(rng))
            } else {
                V::Str(rng.pick(&TEXTS).to_string())
            }
        }
        Family::Bin => {
            let n = if p.lo == 16 {
                16
            } else {
                rng.below(5) as usize
            };
            V::Bin((0..n).map(|_| rng.below(4) as u8 * 85).collect())
        }
        Family::Bool => V::Bool(rng.chance(0.5)),
        Family::Date => {
            let base = day_number(2024, 6, 1);
            V::Date(match rng.below(6) {
                0 => day_number(1900, 1, 1),
                1 => day_number(2199, 12, 31),
                2 => -1,
                _ => base + rng.range(-40, 40) as i64,
            })
        }
        Family::Ts => {
            let base = day_number(2024, 6, 1) as i128 * 86_400 * 1_000_000_000;
            let ns = match rng.below(8) {
                0 => day_number(1900, 1, 1) as i128 * 86_400_000_000_000,
                1 => day_number(2200, 1, 1) as i128 * 86_400_000_000_000,
                2 => -1_000_000_000,
                3 => 0,
                _ => base + rng.range(-5_000_000_000_000, 5_000_000_000_000),
            };
            V::Ts((ns.div_euclid(p.step) * p.step) as i64)
        }
    }
}

fn round_to(x: f64, p: &Pair) -> f64 {
    if [&p.ts, &p.tr].iter().any(|t| **t == DataType::Float32) {
        x as f32 as f64
    } else {
        x
    }
}

/// A value near `x` (the other side's): at a rule's boundary, one unit off, a case or
/// whitespace variant.
fn near_value(rng: &mut Rng, p: &Pair, x: &V, rule: &Rule, c: &Classes) -> V {
    match (p.family, x) {
        (Family::Int, V::Int(i)) => {
            let tol = rule.abs_tol.map(|t| t as i128).unwrap_or(1);
            let d = rng.pick(&[1, -1, tol, -tol, tol + 1, -tol - 1, 2]);
            V::Int(i.saturating_add(d).clamp(p.lo, p.hi))
        }
        (Family::Dec, V::Dec(m, s)) => {
            // tolerance at the logical scale, when it has no more places
            let scale = 10f64.powi(*s as i32);
            let tol = rule
                .abs_tol
                .map(|t| (t * scale).round() as i128)
                .unwrap_or(1);
            let d = rng.pick(&[1, -1, tol, -tol, tol + 1, tol - 1, -tol + 1]);
            V::Dec(m.wrapping_add(i256::from_i128(d)), *s)
        }
        (Family::Float, V::F(f)) => {
            let f = *f;
            let y = match p.frac_bits {
                Some(bits) => f + rng.pick(&[1.0, -1.0, 2.0]) / (1u64 << bits) as f64,
                None => {
                    let t = rule.abs_tol.unwrap_or(0.0);
                    let r = rule.rel_tol.unwrap_or(0.0) * f.abs();
                    let edge = rng.pick(&[f + t, f - t, f + r, f - r]);
                    match rng.below(8) {
                        0 if c.float_tolerance_boundary => edge.next_up(),
                        1 if c.float_tolerance_boundary => edge.next_down(),
                        2 => f.next_up(),
                        3 => -f,
                        4 if c.nan => f64::NAN,
                        _ => edge,
                    }
                }
            };
            V::F(round_to(y, p))
        }
        (Family::Text, V::Str(s)) => V::Str(match rng.below(6) {
            0 => s.to_uppercase(),
            1 => s.to_lowercase(),
            2 => format!(" {s}"),
            3 => format!("{s}\t"),
            4 => String::new(),
            _ => format!(" {} ", s.to_uppercase()),
        }),
        (Family::Ts, V::Ts(ns)) => {
            let ns = *ns as i128;
            let prec = match rule.precision.as_deref() {
                Some("s") => 1_000_000_000,
                Some("ms") => 1_000_000,
                Some("us") => 1_000,
                _ => p.step,
            };
            let d = rng.pick(&[p.step, -p.step, prec, prec - p.step, -prec]);
            let y = ns + d;
            V::Ts((y.div_euclid(p.step) * p.step) as i64)
        }
        (Family::Date, V::Date(d)) => V::Date(d + rng.pick(&[1, -1])),
        (Family::Bool, V::Bool(b)) => V::Bool(!b),
        (Family::Bin, V::Bin(b)) => {
            let mut b = b.clone();
            if let Some(x) = b.first_mut() {
                *x ^= 1;
            } else {
                b.push(0);
            }
            V::Bin(b)
        }
        _ => x.clone(),
    }
}

/// The logical value in one side's type (None when it does not fit).
fn side_value(p: &Pair, v: &V, source: bool) -> Option<V> {
    let t = if source { &p.ts } else { &p.tr };
    let t = super::reference::value_type(t);
    if let (V::Dec(m, _), Family::Dec) = (v, p.family) {
        // within the digits both sides hold
        let max = i256::from_i128(10)
            .checked_pow(p.hi as u32)
            .unwrap_or(i256::MAX);
        if m.wrapping_abs() >= max {
            return None;
        }
    }
    if let (V::F(x), Some(_)) = (v, p.frac_bits)
        && (x.abs() > p.hi.max(-p.lo) as f64 + 1.0 || !x.is_finite())
    {
        return None;
    }
    if let V::Int(i) = v
        && p.family == Family::Int
        && !(p.lo..=p.hi).contains(i)
    {
        return None;
    }
    convert(v, &p.logical, t)
}

/// A value only the source side's type can hold (for `unrepresentable`).
fn wild_value(rng: &mut Rng, p: &Pair, c: &Classes) -> Option<V> {
    let t = super::reference::value_type(&p.ts);
    match t {
        t if t.is_integer() => {
            let (lo, hi) = int_range(t);
            if c.u64_above_i64 && *t == DataType::UInt64 {
                return Some(V::Int(i64::MAX as i128 + 1 + rng.range(0, 5)));
            }
            c.unrepresentable
                .then(|| V::Int(if rng.chance(0.5) { hi } else { lo }))
        }
        DataType::Decimal128(pp, s) | DataType::Decimal256(pp, s) if c.unrepresentable => {
            let max = 10i128.pow((*pp).min(38) as u32) - 1;
            let _ = s;
            Some(V::Dec(i256::from_i128(rng.range(-max, max)), *s))
        }
        DataType::Timestamp(u, _) if c.unrepresentable => {
            let base = day_number(2024, 6, 1) as i128 * 86_400 * 1_000_000_000 / unit_ns(*u);
            Some(V::Ts((base + rng.range(1, 999)) as i64))
        }
        DataType::Float32 | DataType::Float64 if c.unrepresentable => {
            Some(V::F(rng.range(-999, 999) as f64 / 8.0))
        }
        _ => None,
    }
}

/// A value from the full range of the source side's type, if the switches allow it.
fn maybe_wild(rng: &mut Rng, p: &Pair, c: &Classes, v: V) -> V {
    if (c.unrepresentable || c.u64_above_i64)
        && rng.chance(0.15)
        && let Some(w) = wild_value(rng, p, c)
    {
        return w;
    }
    v
}

fn rule_for(rng: &mut Rng, family: Family, owners: &[Owner]) -> Rule {
    let mut r = Rule::default();
    match family {
        Family::Text => {
            for c in ["case_insensitive", "trim", "null_equals_empty"] {
                if rng.chance(0.35) {
                    r.compare.push(c.into());
                }
            }
        }
        Family::Int | Family::Dec | Family::Float => match rng.below(5) {
            0 | 1 => {}
            2 => r.abs_tol = Some(rng.pick(&[0.05, 0.5, 1.0, 2.0, 0.001, 0.1, 1e-9, 100.0, 0.25])),
            3 => r.rel_tol = Some(rng.pick(&[0.01, 0.001, 0.5, 1e-6, 0.1])),
            _ => {
                r.abs_tol = Some(rng.pick(&[0.05, 1.0, 0.01]));
                r.rel_tol = Some(rng.pick(&[0.01, 0.1]));
            }
        },
        Family::Ts if rng.chance(0.4) => {
            r.precision = Some(rng.pick(&["s", "ms", "us", "ns"]).to_string());
        }
        _ => {}
    }
    r.owner = rng.pick(owners);
    if rng.chance(0.08) {
        // an ignored field takes no owner or compare rules
        r = Rule {
            ignore: true,
            ..Rule::default()
        };
    }
    r
}

const FAMILIES: [Family; 8] = [
    Family::Int,
    Family::Dec,
    Family::Float,
    Family::Text,
    Family::Bin,
    Family::Bool,
    Family::Date,
    Family::Ts,
];
const KEY_FAMILIES: [Family; 6] = [
    Family::Int,
    Family::Int,
    Family::Text,
    Family::Date,
    Family::Ts,
    Family::Dec,
];

/// One entity: columns, rules and rows.
fn entity(rng: &mut Rng, c: &Classes, name: String) -> EntityCase {
    let nkeys = 1 + rng.below(3) as usize;
    let mut cols = Vec::new();
    let mut pairs = Vec::new();
    let mut roles = Vec::new(); // 0 key, 1 field, 2 by, 3 soft, 4 one-sided
    for i in 0..nkeys {
        let fam = if nkeys > 1 && rng.chance(0.1) {
            Family::Bool
        } else {
            rng.pick(&KEY_FAMILIES)
        };
        pairs.push(pair(rng, fam, c, true));
        roles.push(0);
        let n = format!("k{i}");
        let renamed = rng.chance(0.15);
        cols.push(ColSpec {
            replica: if renamed { format!("{n}_r") } else { n.clone() },
            source: n,
            ts: DataType::Null,
            tr: DataType::Null,
            null_s: rng.chance(0.3),
            null_r: rng.chance(0.3),
            presence: Presence::Both,
        });
    }
    let nfields = rng.below(6) as usize;
    for i in 0..nfields {
        let mut fam = rng.pick(&FAMILIES);
        if fam == Family::Bool && !c.boolean_fields {
            fam = Family::Text;
        }
        pairs.push(pair(rng, fam, c, false));
        roles.push(1);
        let n = format!("f{i}");
        let renamed = rng.chance(0.2);
        let nullable = rng.chance(0.7);
        cols.push(ColSpec {
            replica: if renamed { format!("{n}_r") } else { n.clone() },
            source: n,
            ts: DataType::Null,
            tr: DataType::Null,
            null_s: nullable || rng.chance(0.2),
            null_r: nullable || rng.chance(0.2),
            presence: Presence::Both,
        });
    }
    // a `by` column for newest owners
    let with_by = rng.chance(0.4);
    if with_by {
        let fam = rng.pick(&[Family::Ts, Family::Ts, Family::Date, Family::Int]);
        pairs.push(pair(rng, fam, c, false));
        roles.push(2);
        cols.push(ColSpec {
            source: "upd".into(),
            replica: if rng.chance(0.2) {
                "upd_r".into()
            } else {
                "upd".into()
            },
            ts: DataType::Null,
            tr: DataType::Null,
            null_s: true,
            null_r: true,
            presence: Presence::Both,
        });
    }
    let deletes = match rng.below(5) {
        0 | 1 => Deletes::Hard,
        2 => Deletes::Report,
        _ => {
            let fam = rng.pick(&[Family::Ts, Family::Bool, Family::Bool, Family::Date]);
            let mut p = pair(rng, fam, c, false);
            if fam == Family::Ts {
                // the run date's midnight must fit every unit: any unit does
                p.step = unit_ns(TimeUnit::Second);
                if !c.soft_zoned {
                    for t in [&mut p.ts, &mut p.tr] {
                        if let DataType::Timestamp(u, Some(z)) = t
                            && &**z != "UTC"
                        {
                            *t = DataType::Timestamp(*u, Some("UTC".into()));
                        }
                    }
                }
            }
            pairs.push(p);
            roles.push(3);
            let only_replica = c.soft_replica_only && rng.chance(0.3);
            cols.push(ColSpec {
                source: "del".into(),
                replica: if rng.chance(0.2) && !only_replica {
                    "del_r".into()
                } else {
                    "del".into()
                },
                ts: DataType::Null,
                tr: DataType::Null,
                null_s: true,
                null_r: true,
                presence: if only_replica {
                    Presence::ReplicaOnly
                } else {
                    Presence::Both
                },
            });
            Deletes::Soft {
                column: "del".into(),
                deleted_value: if fam == Family::Bool {
                    rng.pick(&[None, Some(true), Some(false)])
                } else {
                    None
                },
            }
        }
    };
    for (presence, n) in [(Presence::SourceOnly, "xs"), (Presence::ReplicaOnly, "xr")] {
        if rng.chance(0.15) {
            let fam = rng.pick(&[Family::Int, Family::Text]);
            pairs.push(pair(rng, fam, c, false));
            roles.push(4);
            cols.push(ColSpec {
                source: n.into(),
                replica: n.into(),
                ts: DataType::Null,
                tr: DataType::Null,
                null_s: true,
                null_r: true,
                presence,
            });
        }
    }
    for (col, p) in cols.iter_mut().zip(&pairs) {
        col.ts = p.ts.clone();
        col.tr = p.tr.clone();
        if col.presence == Presence::ReplicaOnly {
            col.ts = p.tr.clone();
        }
        if col.presence == Presence::SourceOnly {
            col.tr = p.ts.clone();
        }
    }
    let key: Vec<String> = cols[..nkeys].iter().map(|c| c.source.clone()).collect();
    let mut owners = vec![Owner::Source, Owner::Source, Owner::Replica, Owner::None];
    if with_by {
        owners.push(Owner::Newest("upd".into()));
        owners.push(Owner::Newest("upd".into()));
    }
    let mut rules = BTreeMap::new();
    for (i, col) in cols.iter().enumerate() {
        if roles[i] == 1 || roles[i] == 2 {
            let mut r = rule_for(rng, pairs[i].family, &owners);
            if roles[i] == 2 {
                r.owner = Owner::Source;
            }
            if r != Rule::default() {
                rules.insert(col.source.clone(), r);
            }
        }
    }
    // With `unrepresentable` off, every value must fit the other side (both ways).

    // Rows: a universe of keys, each on one or both sides.
    let nkeys_universe = 1 + rng.below(10) as usize;
    let mut universe: Vec<Vec<V>> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..nkeys_universe {
        let k: Vec<V> = (0..nkeys)
            .map(|i| logical_value(rng, &pairs[i], c))
            .collect();
        // equal logical keys are equal on both sides: one of them unless duplicates are on
        let text: Vec<String> = k.iter().map(lit).collect();
        if seen.insert(text) || c.duplicate_keys {
            universe.push(k);
        }
    }
    let mut source_rows = Vec::new();
    let mut replica_rows = Vec::new();
    let width = cols.len();
    let fill = |rng: &mut Rng, source: bool, keyv: &[V], other: Option<&Vec<V>>| -> Vec<V> {
        let mut row = vec![V::Null; width];
        for i in 0..width {
            let p = &pairs[i];
            let col = &cols[i];
            let present = match col.presence {
                Presence::Both => true,
                Presence::SourceOnly => source,
                Presence::ReplicaOnly => !source,
            };
            if !present {
                continue;
            }
            let nullable = if source { col.null_s } else { col.null_r };
            // NULL only where both sides can hold it (a correction may copy it)
            let both_null = (col.null_s && col.null_r || col.presence != Presence::Both)
                && (c.field_nulls || roles[i] == 3);
            let logical = if i < nkeys {
                if nullable && c.null_keys && rng.chance(0.04) {
                    continue;
                }
                keyv[i].clone()
            } else if roles[i] == 3 {
                // soft column: mostly live
                let deleted = rng.chance(0.2);
                match p.family {
                    Family::Bool => {
                        let dv = match &deletes {
                            Deletes::Soft { deleted_value, .. } => deleted_value.unwrap_or(true),
                            _ => true,
                        };
                        V::Bool(if deleted { dv } else { !dv })
                    }
                    _ if deleted => logical_value(rng, p, c),
                    _ => continue,
                }
            } else {
                let rule = rules.get(&col.source).cloned().unwrap_or_default();
                let base = other.map(|o| &o[i]);
                let v = match base {
                    Some(b) if !b.is_null() && rng.chance(0.85) => {
                        if rng.chance(0.55) {
                            b.clone()
                        } else {
                            near_value(rng, p, b, &rule, c)
                        }
                    }
                    _ => {
                        if nullable && both_null && rng.chance(0.15) {
                            continue;
                        }
                        logical_value(rng, p, c)
                    }
                };
                if nullable && both_null && rng.chance(0.05) {
                    continue;
                }
                v
            };
            let mut v = side_value(p, &logical, source)
                .or_else(|| side_value(p, &logical_value(rng, p, c), source));
            // A fresh value in the logical domain fits in the end (a Float16 side fits few).
            for _ in 0..64 {
                if v.is_some() {
                    break;
                }
                v = side_value(p, &logical_value(rng, p, c), source);
            }
            let Some(mut v) = v else {
                if nullable {
                    continue;
                }
                panic!(
                    "no value of {:?} fits {}",
                    logical,
                    if source { &p.ts } else { &p.tr }
                )
            };
            if source && roles[i] == 1 {
                v = maybe_wild(rng, p, c, v);
            }
            row[i] = v;
        }
        row
    };
    // logical rows of the source, kept to derive the replica's
    for (n, keyv) in universe.iter().enumerate() {
        let on_source = rng.chance(0.8) || (n == 0 && !c.empty_source);
        let on_replica = rng.chance(0.8);
        let mut logical_source: Option<Vec<V>> = None;
        if on_source {
            let row = fill(rng, true, keyv, None);
            source_rows.push(row.clone());
            logical_source = Some(to_logical(&row, &pairs));
            if c.duplicate_keys && rng.chance(0.06) {
                source_rows.push(fill(rng, true, keyv, None));
            }
        }
        if on_replica {
            let row = fill(rng, false, keyv, logical_source.as_ref());
            replica_rows.push(row);
            if c.duplicate_keys && rng.chance(0.06) {
                replica_rows.push(fill(rng, false, keyv, logical_source.as_ref()));
            }
        }
    }
    // shuffle row order
    for rows in [&mut source_rows, &mut replica_rows] {
        for i in (1..rows.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            rows.swap(i, j);
        }
    }
    let layout = |rng: &mut Rng, rows: usize| -> (usize, Vec<usize>) {
        if c.multi_row_files {
            let files = 1 + rng.below(3) as usize;
            (
                files,
                (0..rows)
                    .map(|_| rng.below(files as u64) as usize)
                    .collect(),
            )
        } else {
            (rows.max(1) + rng.below(2) as usize, (0..rows).collect())
        }
    };
    let (source_files, source_file_of) = layout(rng, source_rows.len());
    let (replica_files, replica_file_of) = layout(rng, replica_rows.len());
    EntityCase {
        name,
        cols,
        key,
        rules,
        deletes,
        source_rows,
        replica_rows,
        source_file_of,
        replica_file_of,
        source_files,
        replica_files,
        row_group: 1 + rng.below(4) as usize,
    }
}

/// A source row back in the logical types, to derive near values from.
fn to_logical(row: &[V], pairs: &[Pair]) -> Vec<V> {
    row.iter()
        .zip(pairs)
        .map(|(v, p)| convert(v, &p.ts, &p.logical).unwrap_or(V::Null))
        .collect()
}

pub fn case(seed: u64, c: &Classes) -> Case {
    let mut rng = Rng::new(seed);
    let n = 1 + rng.below(3) as usize;
    Case {
        seed,
        entities: (0..n)
            .map(|i| entity(&mut rng, c, format!("e{i}")))
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------
// Shrinking.

/// Simpler versions of a case, most aggressive first.
fn candidates(case: &Case) -> Vec<Case> {
    let mut out = Vec::new();
    let n = case.entities.len();
    if n > 1 {
        for i in 0..n {
            let mut c = case.clone();
            c.entities.remove(i);
            out.push(c);
        }
    }
    for ei in 0..n {
        let e = &case.entities[ei];
        let with = |f: &dyn Fn(&mut EntityCase)| {
            let mut c = case.clone();
            f(&mut c.entities[ei]);
            c
        };
        // rows: halves, then one at a time
        for side in [true, false] {
            let len = if side {
                e.source_rows.len()
            } else {
                e.replica_rows.len()
            };
            let mut chunks = Vec::new();
            if len > 1 {
                chunks.push((0, len / 2));
                chunks.push((len / 2, len));
            }
            for i in 0..len {
                chunks.push((i, i + 1));
            }
            for (a, b) in chunks {
                out.push(with(&|e: &mut EntityCase| {
                    let (rows, files) = if side {
                        (&mut e.source_rows, &mut e.source_file_of)
                    } else {
                        (&mut e.replica_rows, &mut e.replica_file_of)
                    };
                    rows.drain(a..b);
                    files.drain(a..b);
                }));
            }
        }
        // columns
        for ci in 0..e.cols.len() {
            let name = e.cols[ci].source.clone();
            let is_key = e.key.contains(&name);
            if is_key && e.key.len() == 1 {
                continue;
            }
            out.push(with(&|e: &mut EntityCase| remove_column(e, ci)));
        }
        if e.source_files > 1 || e.replica_files > 1 {
            out.push(with(&|e: &mut EntityCase| {
                e.source_files = 1;
                e.replica_files = 1;
                e.source_file_of.iter_mut().for_each(|f| *f = 0);
                e.replica_file_of.iter_mut().for_each(|f| *f = 0);
            }));
        }
        if e.row_group < 1000 {
            out.push(with(&|e: &mut EntityCase| e.row_group = 1000));
        }
        if e.deletes != Deletes::Hard {
            out.push(with(&|e: &mut EntityCase| {
                if let Deletes::Soft { column, .. } = &e.deletes
                    && let Some(ci) = e.cols.iter().position(|c| &c.source == column)
                {
                    e.deletes = Deletes::Hard;
                    remove_column(e, ci);
                }
                e.deletes = Deletes::Hard;
            }));
        }
        for name in e.rules.keys() {
            let name = name.clone();
            out.push(with(&|e: &mut EntityCase| {
                let owner = e.rules[&name].owner.clone();
                let r = e.rules.get_mut(&name).unwrap();
                *r = Rule {
                    owner,
                    ..Rule::default()
                };
                if *r == Rule::default() {
                    e.rules.remove(&name);
                }
            }));
            out.push(with(&|e: &mut EntityCase| {
                e.rules.get_mut(&name).unwrap().owner = Owner::Source;
                if e.rules[&name] == Rule::default() {
                    e.rules.remove(&name);
                }
            }));
        }
        for ci in 0..e.cols.len() {
            if e.cols[ci].source != e.cols[ci].replica && e.cols[ci].presence == Presence::Both {
                let taken = e.cols.iter().any(|c| c.replica == e.cols[ci].source);
                if !taken {
                    out.push(with(&|e: &mut EntityCase| {
                        e.cols[ci].replica = e.cols[ci].source.clone()
                    }));
                }
            }
        }
        // values
        for side in [true, false] {
            let rows = if side {
                &e.source_rows
            } else {
                &e.replica_rows
            };
            for (ri, row) in rows.iter().enumerate() {
                for (ci, v) in row.iter().enumerate() {
                    let col = &e.cols[ci];
                    let nullable = if side { col.null_s } else { col.null_r };
                    let t = if side { &col.ts } else { &col.tr };
                    let mut simpler = Vec::new();
                    if nullable && !v.is_null() {
                        simpler.push(V::Null);
                    }
                    if let Some(z) = zero(t)
                        && !v.is_null()
                        && !super::reference::same(&z, v)
                    {
                        simpler.push(z);
                    }
                    for s in simpler {
                        out.push(with(&|e: &mut EntityCase| {
                            let rows = if side {
                                &mut e.source_rows
                            } else {
                                &mut e.replica_rows
                            };
                            rows[ri][ci] = s.clone();
                        }));
                    }
                }
            }
        }
    }
    out
}

/// The simplest non-NULL value of a type.
fn zero(t: &DataType) -> Option<V> {
    let t = super::reference::value_type(t);
    Some(match t {
        t if t.is_integer() => V::Int(0),
        DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => V::Dec(i256::ZERO, *s),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => V::F(0.0),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => V::Str(String::new()),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => V::Bin(vec![]),
        DataType::Boolean => V::Bool(false),
        _ => return None,
    })
}

fn remove_column(e: &mut EntityCase, ci: usize) {
    let name = e.cols[ci].source.clone();
    e.cols.remove(ci);
    for r in e.source_rows.iter_mut().chain(e.replica_rows.iter_mut()) {
        r.remove(ci);
    }
    e.key.retain(|k| k != &name);
    e.rules.remove(&name);
    for r in e.rules.values_mut() {
        if r.owner == Owner::Newest(name.clone()) {
            r.owner = Owner::Source;
        }
    }
    e.rules.retain(|_, r| *r != Rule::default());
    if matches!(&e.deletes, Deletes::Soft { column, .. } if *column == name) {
        e.deletes = Deletes::Hard;
    }
}

/// Shrinks `case` while `fails` says it still fails; returns the smallest and its failure.
pub fn shrink(
    mut case: Case,
    mut failure: String,
    fails: &mut dyn FnMut(&Case) -> Option<String>,
) -> (Case, String) {
    let mut budget = 600;
    'outer: loop {
        for c in candidates(&case) {
            if budget == 0 {
                break 'outer;
            }
            budget -= 1;
            if let Some(f) = fails(&c) {
                case = c;
                failure = f;
                continue 'outer;
            }
        }
        break;
    }
    (case, failure)
}
