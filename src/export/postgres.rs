//! PostgreSQL: every entity of the system from one REPEATABLE READ, READ ONLY
//! transaction (one consistent database snapshot), each streamed with
//! `COPY (…) TO STDOUT (FORMAT binary)` and decoded straight into Arrow builders.

use std::collections::BTreeMap;

use arrow::datatypes::{DataType, TimeUnit};
use bytes::{Buf, BytesMut};
use futures::StreamExt;
use tokio_postgres::IsolationLevel;
use tokio_postgres::types::{Kind, Type};
use tracing::info;

use super::builder::{ColumnBuilder, PG_EPOCH_DAYS, PG_EPOCH_MICROS};
use super::{Target, data_error, entity_sql, open_entity};
use crate::db::postgres::describe;
use crate::error::{Error, Result};
use crate::job::JobConfig;
use crate::job::exporters::ExporterConfig;

pub(crate) async fn export(
    _job: &JobConfig,
    exporter: &ExporterConfig,
    url: &str,
    targets: &mut [Target<'_>],
) -> Result<BTreeMap<String, String>> {
    let system = exporter.system.as_str();
    let unavailable = |e: tokio_postgres::Error| Error::SourceUnavailable {
        system: system.to_string(),
        message: format!("export: PostgreSQL: {}", describe(&e)),
    };
    let (mut client, conn) = crate::db::postgres::connect(system, url).await?;
    let result = async {
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(unavailable)?;
        // The snapshot is taken by the first query: read the position first.
        let row = tx
            .query_one(
                "SELECT txid_snapshot_xmin(txid_current_snapshot())::text, \
                 (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
                 to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
                &[],
            )
            .await
            .map_err(unavailable)?;
        let mut watermark = BTreeMap::new();
        watermark.insert("postgres_xmin".to_string(), row.get::<_, String>(0));
        if let Some(lsn) = row.get::<_, Option<String>>(1) {
            watermark.insert("postgres_lsn".to_string(), lsn);
        }
        watermark.insert("snapshot_time".to_string(), row.get::<_, String>(2));
        for target in targets.iter_mut() {
            export_entity(&tx, system, exporter.batch_rows, target).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(watermark)
    }
    .await;
    drop(client);
    let _ = conn.await;
    result
}

async fn export_entity(
    tx: &tokio_postgres::Transaction<'_>,
    system: &str,
    batch_rows: usize,
    target: &mut Target<'_>,
) -> Result<()> {
    let entity = target.entity.name.clone();
    let (sql, source) = entity_sql(target, '"');
    let sql_error = |e: tokio_postgres::Error| {
        data_error(system, &entity, format!("{source}: {}", describe(&e)))
    };
    let stmt = tx.prepare(&sql).await.map_err(sql_error)?;
    let mut decoders = Vec::with_capacity(stmt.columns().len());
    let mut fields = Vec::with_capacity(stmt.columns().len());
    for col in stmt.columns() {
        let (data_type, decoder) = map_type(col.type_(), col.type_modifier()).map_err(|m| {
            data_error(
                system,
                &entity,
                format!("{source}, column `{}`: {m}", col.name()),
            )
        })?;
        fields.push((col.name().to_string(), data_type));
        decoders.push(decoder);
    }
    let (names, mut batch, mut writer) = open_entity(target, system, &source, fields, batch_rows)?;
    let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
    let stream = tx.copy_out(copy.as_str()).await.map_err(sql_error)?;
    futures::pin_mut!(stream);
    let mut parser = CopyParser::default();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(sql_error)?;
        parser.buf.extend_from_slice(&chunk);
        loop {
            let parsed = parser
                .next_row(&decoders, &mut batch.columns)
                .map_err(|(col, m)| {
                    let column = col
                        .map(|i| format!(", column `{}`", names[i]))
                        .unwrap_or_default();
                    data_error(system, &entity, format!("{source}{column}: {m}"))
                })?;
            match parsed {
                Parsed::Row => {
                    batch.rows += 1;
                    if batch.is_full() {
                        writer.write(&batch.finish()).await?;
                    }
                }
                Parsed::NeedMore | Parsed::End => break,
            }
        }
    }
    if !parser.ended {
        return Err(data_error(
            system,
            &entity,
            format!("{source}: the COPY stream ended early"),
        ));
    }
    if batch.rows > 0 {
        writer.write(&batch.finish()).await?;
    }
    info!(system, entity = %entity, rows = writer.rows(), "exported");
    writer.finish(target).await
}

/// How one column's binary values become Arrow values.
#[derive(Debug, Clone, Copy)]
enum Decoder {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Text,
    Jsonb,
    Uuid,
    Date,
    Time,
    Timestamp,
    Bytea,
}

/// The Arrow type and decoder for a PostgreSQL column; an error for types recon does
/// not export faithfully.
fn map_type(ty: &Type, typmod: i32) -> std::result::Result<(DataType, Decoder), String> {
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Ok(match *ty {
        Type::BOOL => (DataType::Boolean, Decoder::Bool),
        Type::INT2 => (DataType::Int16, Decoder::Int2),
        Type::INT4 => (DataType::Int32, Decoder::Int4),
        Type::INT8 => (DataType::Int64, Decoder::Int8),
        Type::FLOAT4 => (DataType::Float32, Decoder::Float4),
        Type::FLOAT8 => (DataType::Float64, Decoder::Float8),
        Type::NUMERIC => {
            if typmod < 4 {
                return Err(
                    "type numeric has no declared precision and scale, so it has no exact Arrow decimal type; cast it in a query, e.g. `amount::numeric(18,2)`"
                        .into(),
                );
            }
            let p = (((typmod - 4) >> 16) & 0xffff) as u8;
            let s = ((typmod - 4) & 0xffff) as i16;
            if p > 38 || s < 0 || s > p as i16 {
                return Err(format!(
                    "type numeric({p},{s}) does not fit Arrow's decimal128 (at most 38 digits, scale 0 to precision)"
                ));
            }
            (DataType::Decimal128(p, s as i8), Decoder::Numeric)
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON | Type::CHAR => {
            (DataType::Utf8, Decoder::Text)
        }
        Type::JSONB => (DataType::Utf8, Decoder::Jsonb),
        Type::UUID => (DataType::Utf8, Decoder::Uuid),
        Type::DATE => (DataType::Date32, Decoder::Date),
        Type::TIME => (DataType::Time64(TimeUnit::Microsecond), Decoder::Time),
        Type::TIMESTAMP => (
            DataType::Timestamp(TimeUnit::Microsecond, None),
            Decoder::Timestamp,
        ),
        Type::TIMESTAMPTZ => (utc, Decoder::Timestamp),
        Type::BYTEA => (DataType::Binary, Decoder::Bytea),
        _ => match ty.kind() {
            // Enum labels and citext are text on the wire and in meaning.
            Kind::Enum(_) => (DataType::Utf8, Decoder::Text),
            Kind::Simple if ty.name() == "citext" => (DataType::Utf8, Decoder::Text),
            Kind::Domain(inner) => map_type(inner, typmod)?,
            _ => {
                return Err(format!(
                    "type {} is not supported (supported: integers, numeric(p,s), float, bool, text, varchar, char, uuid, json, jsonb, date, time, timestamp, timestamptz, bytea, enums); cast it in a query, e.g. `col::text`",
                    ty.name()
                ));
            }
        },
    })
}

#[derive(Default)]
struct CopyParser {
    buf: BytesMut,
    header_done: bool,
    ended: bool,
}

enum Parsed {
    Row,
    NeedMore,
    End,
}

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl CopyParser {
    /// Decodes the next complete row from the buffer into `columns`.
    fn next_row(
        &mut self,
        decoders: &[Decoder],
        columns: &mut [ColumnBuilder],
    ) -> std::result::Result<Parsed, (Option<usize>, String)> {
        if self.ended {
            return Ok(Parsed::End);
        }
        if !self.header_done {
            if self.buf.len() < SIGNATURE.len() + 8 {
                return Ok(Parsed::NeedMore);
            }
            if &self.buf[..SIGNATURE.len()] != SIGNATURE {
                return Err((None, "the COPY stream has no binary signature".into()));
            }
            let ext = u32::from_be_bytes(self.buf[15..19].try_into().expect("4 bytes")) as usize;
            if self.buf.len() < 19 + ext {
                return Ok(Parsed::NeedMore);
            }
            self.buf.advance(19 + ext);
            self.header_done = true;
        }
        // Check the row is complete before decoding any of it.
        if self.buf.len() < 2 {
            return Ok(Parsed::NeedMore);
        }
        let count = i16::from_be_bytes([self.buf[0], self.buf[1]]);
        if count == -1 {
            self.buf.advance(2);
            self.ended = true;
            return Ok(Parsed::End);
        }
        if count as usize != decoders.len() {
            return Err((
                None,
                format!("a COPY row has {count} fields, expected {}", decoders.len()),
            ));
        }
        let mut pos = 2;
        for _ in 0..count {
            if self.buf.len() < pos + 4 {
                return Ok(Parsed::NeedMore);
            }
            let len = i32::from_be_bytes(self.buf[pos..pos + 4].try_into().expect("4 bytes"));
            pos += 4;
            if len > 0 {
                pos += len as usize;
            }
        }
        if self.buf.len() < pos {
            return Ok(Parsed::NeedMore);
        }
        let row = self.buf.split_to(pos).freeze();
        let mut p = 2;
        for (i, (decoder, column)) in decoders.iter().zip(columns.iter_mut()).enumerate() {
            let len = i32::from_be_bytes(row[p..p + 4].try_into().expect("4 bytes"));
            p += 4;
            if len < 0 {
                column.append_null();
                continue;
            }
            let value = &row[p..p + len as usize];
            p += len as usize;
            decode(*decoder, value, column).map_err(|m| (Some(i), m))?;
        }
        Ok(Parsed::Row)
    }
}

fn be<const N: usize>(v: &[u8]) -> std::result::Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("a binary value of {} bytes, expected {N}", v.len()))
}

fn decode(
    decoder: Decoder,
    v: &[u8],
    column: &mut ColumnBuilder,
) -> std::result::Result<(), String> {
    match (decoder, column) {
        (Decoder::Bool, ColumnBuilder::Boolean(b)) => b.append_value(v.first() == Some(&1)),
        (Decoder::Int2, ColumnBuilder::Int16(b)) => b.append_value(i16::from_be_bytes(be(v)?)),
        (Decoder::Int4, ColumnBuilder::Int32(b)) => b.append_value(i32::from_be_bytes(be(v)?)),
        (Decoder::Int8, ColumnBuilder::Int64(b)) => b.append_value(i64::from_be_bytes(be(v)?)),
        (Decoder::Float4, ColumnBuilder::Float32(b)) => b.append_value(f32::from_be_bytes(be(v)?)),
        (Decoder::Float8, ColumnBuilder::Float64(b)) => b.append_value(f64::from_be_bytes(be(v)?)),
        (Decoder::Numeric, ColumnBuilder::Decimal(b, p, s)) => {
            b.append_value(decode_numeric(v, *p, *s)?)
        }
        (Decoder::Text, ColumnBuilder::Utf8(b)) => b.append_value(utf8(v)?),
        (Decoder::Jsonb, ColumnBuilder::Utf8(b)) => match v.split_first() {
            Some((1, rest)) => b.append_value(utf8(rest)?),
            _ => return Err("jsonb value in an unknown binary version".into()),
        },
        (Decoder::Uuid, ColumnBuilder::Utf8(b)) => {
            b.append_value(uuid::Uuid::from_bytes(be(v)?).hyphenated().to_string())
        }
        (Decoder::Date, ColumnBuilder::Date32(b)) => {
            let days = i32::from_be_bytes(be(v)?);
            if days == i32::MAX || days == i32::MIN {
                return Err(
                    "date 'infinity' has no Arrow value; filter or cast it in a query".into(),
                );
            }
            b.append_value(
                days.checked_add(PG_EPOCH_DAYS)
                    .ok_or("date out of Arrow's range")?,
            )
        }
        (Decoder::Time, ColumnBuilder::Time64(b)) => b.append_value(i64::from_be_bytes(be(v)?)),
        (Decoder::Timestamp, ColumnBuilder::Timestamp(b, _)) => {
            let micros = i64::from_be_bytes(be(v)?);
            if micros == i64::MAX || micros == i64::MIN {
                return Err(
                    "timestamp 'infinity' has no Arrow value; filter or cast it in a query".into(),
                );
            }
            b.append_value(
                micros
                    .checked_add(PG_EPOCH_MICROS)
                    .ok_or("timestamp out of Arrow's range")?,
            )
        }
        (Decoder::Bytea, ColumnBuilder::Binary(b)) => b.append_value(v),
        (d, _) => unreachable!("decoder {d:?} is paired with its builder in map_type"),
    }
    Ok(())
}

fn utf8(v: &[u8]) -> std::result::Result<&str, String> {
    std::str::from_utf8(v).map_err(|e| format!("text that is not UTF-8: {e}"))
}

/// PostgreSQL's binary numeric (base-10000 digits) to an unscaled i128 at `scale`.
fn decode_numeric(v: &[u8], precision: u8, scale: i8) -> std::result::Result<i128, String> {
    if v.len() < 8 {
        return Err("a numeric value shorter than its header".into());
    }
    let ndigits = i16::from_be_bytes([v[0], v[1]]) as i64;
    let weight = i16::from_be_bytes([v[2], v[3]]) as i64;
    let sign = u16::from_be_bytes([v[4], v[5]]);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => {
            return Err("numeric 'NaN' has no decimal value; filter it or cast in a query".into());
        }
        _ => {
            return Err(
                "numeric 'Infinity' has no decimal value; filter it or cast in a query".into(),
            );
        }
    }
    if v.len() != 8 + 2 * ndigits as usize {
        return Err("a numeric value whose length does not match its digit count".into());
    }
    let overflow = || format!("a numeric value does not fit decimal({precision},{scale})");
    let too_fine = || format!("a numeric value has more than {scale} decimal places");
    let scale = scale.max(0) as i64;
    let mut acc: i128 = 0;
    // Decimal places `acc` carries so far; fractional digits beyond the scale must be 0.
    let mut places: i64 = 0;
    for i in 0..ndigits {
        let d = u16::from_be_bytes([v[8 + 2 * i as usize], v[9 + 2 * i as usize]]) as i128;
        let pos = weight - i;
        let after = if pos >= 0 { 0 } else { 4 * -pos };
        let keep = if pos >= 0 { 4 } else { scale - (after - 4) };
        if keep >= 4 {
            acc = acc
                .checked_mul(10_000)
                .and_then(|a| a.checked_add(d))
                .ok_or_else(overflow)?;
            places = after;
        } else if keep <= 0 {
            if d != 0 {
                return Err(too_fine());
            }
        } else {
            let div = 10i128.pow((4 - keep) as u32);
            if d % div != 0 {
                return Err(too_fine());
            }
            acc = acc
                .checked_mul(10i128.pow(keep as u32))
                .and_then(|a| a.checked_add(d / div))
                .ok_or_else(overflow)?;
            places = scale;
        }
    }
    // Integer groups of zeros after the last digit are not sent.
    if ndigits > 0 && weight > ndigits - 1 {
        for _ in 0..(weight - (ndigits - 1)) {
            acc = acc.checked_mul(10_000).ok_or_else(overflow)?;
        }
    }
    acc = acc
        .checked_mul(
            10i128
                .checked_pow((scale - places) as u32)
                .ok_or_else(overflow)?,
        )
        .ok_or_else(overflow)?;
    if acc >= 10i128.pow(precision as u32) {
        return Err(overflow());
    }
    Ok(if sign == 0x4000 { -acc } else { acc })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: i16, weight: i16, neg: bool, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&ndigits.to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&(if neg { 0x4000u16 } else { 0 }).to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_decodes_exactly() {
        // 12345.67 = [1, 2345, 6700], weight 1
        assert_eq!(
            decode_numeric(&numeric(3, 1, false, 2, &[1, 2345, 6700]), 10, 2),
            Ok(1234567)
        );
        // -0.05 = [500], weight -1
        assert_eq!(
            decode_numeric(&numeric(1, -1, true, 2, &[500]), 10, 2),
            Ok(-5)
        );
        // 20000 = [2], weight 1 (trailing zero groups dropped)
        assert_eq!(
            decode_numeric(&numeric(1, 1, false, 0, &[2]), 10, 2),
            Ok(2_000_000)
        );
        // 0
        assert_eq!(decode_numeric(&numeric(0, 0, false, 2, &[]), 10, 2), Ok(0));
        // 38 digits: 1234567890123456789012345678.0123456789 at scale 10
        let digits = [1234, 5678, 9012, 3456, 7890, 1234, 5678, 123, 4567, 8900];
        assert_eq!(
            decode_numeric(&numeric(10, 6, false, 10, &digits), 38, 10),
            Ok(12345678901234567890123456780123456789)
        );
        // 1.23456 at scale 4 has a digit too many; 1.2345 does not
        assert!(decode_numeric(&numeric(3, 0, false, 5, &[1, 2345, 6000]), 10, 4).is_err());
        assert_eq!(
            decode_numeric(&numeric(2, 0, false, 4, &[1, 2345]), 10, 4),
            Ok(12345)
        );
    }
}
