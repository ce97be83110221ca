//! MySQL and MariaDB: every entity of the system inside one
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY` (REPEATABLE READ), in the
//! UTC session time zone, rows streamed over the binary protocol (exact doubles, dates as
//! fields) into Arrow builders.

use std::collections::BTreeMap;

use arrow::datatypes::{DataType, TimeUnit};
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Conn, Value};
use tracing::info;

use super::builder::ColumnBuilder;
use super::{Target, data_error, entity_sql, open_entity};
use crate::error::{Error, Result};
use crate::job::JobConfig;
use crate::job::exporters::ExporterConfig;

/// The `binary` character set: BLOB and BINARY columns.
const BINARY_CHARSET: u16 = 63;

pub(crate) async fn export(
    _job: &JobConfig,
    exporter: &ExporterConfig,
    url: &str,
    targets: &mut [Target<'_>],
) -> Result<BTreeMap<String, String>> {
    let system = exporter.system.as_str();
    let unavailable = |e: mysql_async::Error| Error::SourceUnavailable {
        system: system.to_string(),
        message: format!("export: MySQL: {e}"),
    };
    let mut conn = crate::db::mysql::connect(system, url, |b| b).await?;
    let result = async {
        for stmt in [
            "SET SESSION time_zone = '+00:00'",
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
        ] {
            conn.query_drop(stmt).await.map_err(unavailable)?;
        }
        let mut watermark = BTreeMap::new();
        // MariaDB's GTID position, else MySQL's; neither is required.
        for (key, sql) in [
            ("mariadb_gtid", "SELECT @@gtid_current_pos"),
            ("mysql_gtid_executed", "SELECT @@global.gtid_executed"),
        ] {
            if let Ok(Some(Some(v))) = conn.query_first::<Option<String>, _>(sql).await {
                if !v.is_empty() {
                    watermark.insert(key.to_string(), v);
                }
                break;
            }
        }
        if let Ok(Some(t)) = conn
            .query_first::<String, _>(
                "SELECT DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%fZ')",
            )
            .await
        {
            watermark.insert("snapshot_time".to_string(), t);
        }
        for target in targets.iter_mut() {
            export_entity(&mut conn, system, exporter.batch_rows, target).await?;
        }
        conn.query_drop("COMMIT").await.map_err(unavailable)?;
        Ok(watermark)
    }
    .await;
    let _ = conn.disconnect().await;
    result
}

async fn export_entity(
    conn: &mut Conn,
    system: &str,
    batch_rows: usize,
    target: &mut Target<'_>,
) -> Result<()> {
    let entity = target.entity.name.clone();
    let (sql, source) = entity_sql(target, '`');
    let sql_error = |e: mysql_async::Error| match e {
        mysql_async::Error::Server(s) => data_error(system, &entity, format!("{source}: {s}")),
        e => Error::SourceUnavailable {
            system: system.to_string(),
            message: format!("export: MySQL, entity `{entity}`: {e}"),
        },
    };
    let mut result = conn.exec_iter(sql.as_str(), ()).await.map_err(sql_error)?;
    let columns = result
        .columns()
        .unwrap_or_else(|| std::sync::Arc::from(vec![]));
    if columns.is_empty() {
        return Err(data_error(
            system,
            &entity,
            format!("{source}: returns no result set"),
        ));
    }
    let mut fields: Vec<(String, DataType)> = Vec::with_capacity(columns.len());
    for col in columns.iter() {
        let name = col.name_str().to_string();
        let data_type = map_type(col)
            .map_err(|m| data_error(system, &entity, format!("{source}, column `{name}`: {m}")))?;
        fields.push((name, data_type));
    }
    let (names, mut batch, mut writer) = open_entity(target, system, &source, fields, batch_rows)?;
    while let Some(row) = result.next().await.map_err(sql_error)? {
        for (i, column) in batch.columns.iter_mut().enumerate() {
            let value_error = |m: String| {
                data_error(
                    system,
                    &entity,
                    format!("{source}, column `{}`: {m}", names[i]),
                )
            };
            match row.as_ref(i) {
                None | Some(Value::NULL) => column.append_null(),
                Some(v) => append(column, v).map_err(value_error)?,
            }
        }
        batch.rows += 1;
        if batch.is_full() {
            writer.write(&batch.finish()).await?;
        }
    }
    if batch.rows > 0 {
        writer.write(&batch.finish()).await?;
    }
    info!(system, entity = %entity, rows = writer.rows(), "exported");
    writer.finish(target).await
}

fn append(column: &mut ColumnBuilder, value: &Value) -> std::result::Result<(), String> {
    let range = |v: &dyn std::fmt::Display| format!("{v} does not fit the column's type");
    match (column, value) {
        (ColumnBuilder::Binary(b), Value::Bytes(bytes)) => b.append_value(bytes),
        (c, Value::Bytes(bytes)) => {
            let text =
                std::str::from_utf8(bytes).map_err(|e| format!("text that is not UTF-8: {e}"))?;
            c.append_text(text)?
        }
        (ColumnBuilder::Boolean(b), Value::Int(i)) => match i {
            0 => b.append_value(false),
            1 => b.append_value(true),
            _ => {
                return Err(format!(
                    "{i} in a tinyint(1) column, which recon reads as boolean; cast it in a query (e.g. `CAST(col AS SIGNED)`)"
                ));
            }
        },
        (ColumnBuilder::Int16(b), Value::Int(i)) => {
            b.append_value(i16::try_from(*i).map_err(|_| range(i))?)
        }
        (ColumnBuilder::Int32(b), Value::Int(i)) => {
            b.append_value(i32::try_from(*i).map_err(|_| range(i))?)
        }
        (ColumnBuilder::Int64(b), Value::Int(i)) => b.append_value(*i),
        (ColumnBuilder::Int16(b), Value::UInt(u)) => {
            b.append_value(i16::try_from(*u).map_err(|_| range(u))?)
        }
        (ColumnBuilder::Int32(b), Value::UInt(u)) => {
            b.append_value(i32::try_from(*u).map_err(|_| range(u))?)
        }
        (ColumnBuilder::Int64(b), Value::UInt(u)) => {
            b.append_value(i64::try_from(*u).map_err(|_| range(u))?)
        }
        (ColumnBuilder::UInt64(b), Value::UInt(u)) => b.append_value(*u),
        (ColumnBuilder::UInt64(b), Value::Int(i)) => {
            b.append_value(u64::try_from(*i).map_err(|_| range(i))?)
        }
        (ColumnBuilder::Float32(b), Value::Float(f)) => b.append_value(*f),
        (ColumnBuilder::Float64(b), Value::Double(d)) => b.append_value(*d),
        (ColumnBuilder::Float64(b), Value::Float(f)) => b.append_value(*f as f64),
        (
            c @ (ColumnBuilder::Date32(_) | ColumnBuilder::Timestamp(..)),
            Value::Date(y, mo, d, h, mi, s, us),
        ) => {
            let date = chrono::NaiveDate::from_ymd_opt(*y as i32, *mo as u32, *d as u32).ok_or_else(|| {
                format!(
                    "zero or invalid date {y:04}-{mo:02}-{d:02} has no Arrow value; filter it or map it with NULLIF in a query"
                )
            })?;
            match c {
                ColumnBuilder::Date32(b) => b.append_value(
                    (date - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days()
                        as i32,
                ),
                ColumnBuilder::Timestamp(b, _) => {
                    let t = date
                        .and_hms_micro_opt(*h as u32, *mi as u32, *s as u32, *us)
                        .ok_or_else(|| {
                            format!("invalid time of day {h:02}:{mi:02}:{s:02}.{us:06}")
                        })?;
                    b.append_value(t.and_utc().timestamp_micros())
                }
                _ => unreachable!("matched above"),
            }
        }
        (ColumnBuilder::Time64(b), Value::Time(neg, days, h, mi, s, us)) => {
            if *neg || *days > 0 {
                return Err(
                    "a TIME outside 00:00:00..24:00:00 has no time-of-day value; cast it in a query".into(),
                );
            }
            b.append_value(
                ((*h as i64 * 60 + *mi as i64) * 60 + *s as i64) * 1_000_000 + *us as i64,
            )
        }
        (_, v) => return Err(format!("unexpected value {v:?} for the column's type")),
    }
    Ok(())
}

/// The Arrow type for a MySQL/MariaDB result column; an error for types recon does not
/// export faithfully.
fn map_type(col: &Column) -> std::result::Result<DataType, String> {
    use ColumnType::*;
    let flags = col.flags();
    let unsigned = flags.contains(ColumnFlags::UNSIGNED_FLAG);
    let binary = col.character_set() == BINARY_CHARSET;
    Ok(match col.column_type() {
        MYSQL_TYPE_TINY if col.column_length() == 1 && !unsigned => DataType::Boolean,
        MYSQL_TYPE_TINY | MYSQL_TYPE_YEAR => DataType::Int16,
        MYSQL_TYPE_SHORT if unsigned => DataType::Int32,
        MYSQL_TYPE_SHORT => DataType::Int16,
        MYSQL_TYPE_INT24 => DataType::Int32,
        MYSQL_TYPE_LONG if unsigned => DataType::Int64,
        MYSQL_TYPE_LONG => DataType::Int32,
        MYSQL_TYPE_LONGLONG if unsigned => DataType::UInt64,
        MYSQL_TYPE_LONGLONG => DataType::Int64,
        MYSQL_TYPE_FLOAT => DataType::Float32,
        MYSQL_TYPE_DOUBLE => DataType::Float64,
        MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL => {
            let scale = col.decimals() as u32;
            // Display length = precision, plus the point, plus a sign unless unsigned.
            let precision = col.column_length() - u32::from(scale > 0) - u32::from(!unsigned);
            if precision == 0 || precision > 38 || scale > precision {
                return Err(format!(
                    "type decimal({precision},{scale}) does not fit Arrow's decimal128 (at most 38 digits)"
                ));
            }
            DataType::Decimal128(precision as u8, scale as i8)
        }
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => DataType::Date32,
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => {
            DataType::Timestamp(TimeUnit::Microsecond, None)
        }
        // Stored in UTC and, in this session, shown in UTC.
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => DataType::Time64(TimeUnit::Microsecond),
        MYSQL_TYPE_JSON | MYSQL_TYPE_ENUM | MYSQL_TYPE_SET => DataType::Utf8,
        MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_STRING
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_BLOB => {
            if binary {
                DataType::Binary
            } else {
                DataType::Utf8
            }
        }
        other => {
            return Err(format!(
                "type {other:?} is not supported (supported: integers, decimal(p,s), float, double, bool, char, varchar, text, enum, set, json, binary, blob, date, time, datetime, timestamp); cast it in a query"
            ));
        }
    })
}
