//! Throwaway databases on the machine's PostgreSQL (127.0.0.1:5432, trust) and MariaDB
//! (127.0.0.1:3306, root): created per test, dropped when the guard goes. A missing
//! server fails the test: these servers are part of the test environment.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, TimeUnit};

use crate::common::read_parquet;

fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("recon_{prefix}_{}", &id[..10])
}

fn pipe(mut cmd: Command, sql: &str, what: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start the client ({e}); the tests need it"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}\nSQL:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sql.chars().take(2000).collect::<String>()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PostgreSQL database of its own.
pub struct Pg {
    pub name: String,
}

impl Pg {
    pub fn create(prefix: &str) -> Self {
        let name = unique(prefix);
        psql("postgres", &format!("CREATE DATABASE {name};"));
        Pg { name }
    }
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
    /// Runs a script; returns what it printed (unaligned, tuples only).
    pub fn exec(&self, sql: &str) -> String {
        psql(&self.name, sql)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE);", self.name),
        );
    }
}

fn psql(db: &str, sql: &str) -> String {
    let mut cmd = Command::new("psql");
    cmd.args(["-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d", db])
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-f", "-"]);
    pipe(cmd, sql, "psql (PostgreSQL at 127.0.0.1:5432)")
}

/// A MariaDB/MySQL database of its own.
pub struct My {
    pub name: String,
}

impl My {
    pub fn create(prefix: &str) -> Self {
        let name = unique(prefix);
        mariadb(
            "",
            &format!("CREATE DATABASE {name} CHARACTER SET utf8mb4;"),
        );
        My { name }
    }
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:3306/{}", self.name)
    }
    pub fn exec(&self, sql: &str) -> String {
        mariadb(&self.name, sql)
    }
}

impl Drop for My {
    fn drop(&mut self) {
        mariadb("", &format!("DROP DATABASE IF EXISTS {};", self.name));
    }
}

fn mariadb(db: &str, sql: &str) -> String {
    let mut cmd = Command::new("mariadb");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-P",
        "3306",
        "-u",
        "root",
        "--batch",
        "--skip-column-names",
    ]);
    if !db.is_empty() {
        cmd.arg(db);
    }
    pipe(
        cmd,
        &format!("SET time_zone = '+00:00';\n{sql}"),
        "mariadb (MariaDB at 127.0.0.1:3306)",
    )
}

/// Which database a script is for.
#[derive(Clone, Copy, PartialEq)]
pub enum Dialect {
    Postgres,
    MariaDb,
}

/// `CREATE TABLE` plus `INSERT`s recreating one Parquet snapshot (its Hive `run_date`
/// column left out), with column types matching the file's Arrow types.
pub fn table_from_parquet(dialect: Dialect, table: &str, file: &Path) -> String {
    let batches = read_parquet(file);
    let schema = batches[0].schema();
    let cols: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| schema.field(i).name() != "run_date")
        .collect();
    let ddl_type = |t: &DataType| -> String {
        match (dialect, t) {
            (_, DataType::Int64) => "bigint".into(),
            (_, DataType::Int32) => "integer".into(),
            (Dialect::Postgres, DataType::Utf8) => "text".into(),
            (Dialect::MariaDb, DataType::Utf8) => "varchar(255)".into(),
            (Dialect::Postgres, DataType::Float64) => "double precision".into(),
            (Dialect::MariaDb, DataType::Float64) => "double".into(),
            (_, DataType::Decimal128(p, s)) => format!("decimal({p},{s})"),
            (Dialect::Postgres, DataType::Timestamp(_, Some(_))) => "timestamptz".into(),
            (Dialect::Postgres, DataType::Timestamp(_, None)) => "timestamp".into(),
            (Dialect::MariaDb, DataType::Timestamp(_, Some(_))) => {
                "timestamp(6) NULL DEFAULT NULL".into()
            }
            (Dialect::MariaDb, DataType::Timestamp(_, None)) => "datetime(6)".into(),
            (_, other) => panic!("no DDL type for {other}"),
        }
    };
    let quote = |n: &str| match dialect {
        Dialect::Postgres => format!("\"{n}\""),
        Dialect::MariaDb => format!("`{n}`"),
    };
    let mut sql = format!(
        "CREATE TABLE {} ({});\n",
        quote(table),
        cols.iter()
            .map(|&i| format!(
                "{} {}",
                quote(schema.field(i).name()),
                ddl_type(schema.field(i).data_type())
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for b in &batches {
        for r in 0..b.num_rows() {
            let values: Vec<String> = cols
                .iter()
                .map(|&i| literal(dialect, b.column(i).as_ref(), r))
                .collect();
            sql.push_str(&format!(
                "INSERT INTO {} VALUES ({});\n",
                quote(table),
                values.join(", ")
            ));
        }
    }
    sql
}

fn literal(dialect: Dialect, a: &dyn Array, r: usize) -> String {
    if a.is_null(r) {
        return "NULL".into();
    }
    match a.data_type() {
        DataType::Utf8 => {
            let s = a.as_string::<i32>().value(r).replace('\'', "''");
            match dialect {
                Dialect::Postgres => format!("'{s}'"),
                Dialect::MariaDb => format!("'{}'", s.replace('\\', "\\\\")),
            }
        }
        DataType::Float64 => {
            let v = a.as_primitive::<arrow::datatypes::Float64Type>().value(r);
            // MariaDB has no NaN; the sample's NaN (equal on both sides) becomes NULL on both.
            if v.is_nan() {
                "NULL".into()
            } else {
                format!("{v:?}")
            }
        }
        DataType::Timestamp(unit, tz) => {
            let v = match unit {
                TimeUnit::Second => {
                    a.as_primitive::<arrow::datatypes::TimestampSecondType>()
                        .value(r)
                        * 1_000_000
                }
                TimeUnit::Millisecond => {
                    a.as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                        .value(r)
                        * 1000
                }
                TimeUnit::Microsecond => a
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .value(r),
                TimeUnit::Nanosecond => {
                    a.as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                        .value(r)
                        / 1000
                }
            };
            let t = chrono::DateTime::from_timestamp_micros(v)
                .unwrap()
                .naive_utc();
            let text = t.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
            match (dialect, tz) {
                (Dialect::Postgres, Some(_)) => format!("'{text}+00'"),
                _ => format!("'{text}'"),
            }
        }
        _ => arrow::util::display::array_value_to_string(a, r).unwrap(),
    }
}
