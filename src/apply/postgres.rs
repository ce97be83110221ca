//! Applying corrections to PostgreSQL. Values travel as one JSON object per row and
//! `json_populate_record(NULL::table, $1)` turns them into the table's own column types,
//! so no value is ever spliced into SQL.

use super::{Correction, Ctx, LEDGER_TABLE, Outcome, SoftTarget, Target, Value};
use crate::error::{Error, Result};
use crate::export::quote_ident;

pub(crate) struct Pg {
    system: String,
    client: tokio_postgres::Client,
}

fn q(name: &str) -> String {
    quote_ident(name, '"')
}

fn json_of(pairs: &[(String, Value)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Guard: every expected column (keys are matched separately) still as the snapshot saw it.
fn guards(target: &Target, c: &Correction) -> String {
    target
        .guard_columns(c)
        .iter()
        .map(|(col, _)| format!(" AND t.{0} IS NOT DISTINCT FROM e.{0}", q(col)))
        .collect()
}

fn keys(target: &Target) -> String {
    target
        .key
        .iter()
        .map(|k| format!("t.{0} = r.{0}", q(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn soft_deleted(s: &SoftTarget) -> String {
    match s.deleted_value {
        Some(v) => format!("t.{} = {v}", q(&s.column)),
        None => format!("t.{} IS NOT NULL", q(&s.column)),
    }
}

/// The statement for one correction: `$1` is the new row, `$2` the expected row.
pub(crate) fn statement(target: &Target, c: &Correction) -> String {
    let t = q(&target.table);
    let rec = |n: u8| format!("json_populate_record(NULL::{t}, ${n}::text::json)");
    match c.op.as_str() {
        "insert" => {
            let cols: Vec<String> = c.values.iter().map(|(k, _)| q(k)).collect();
            format!(
                "INSERT INTO {t} ({}) SELECT {} FROM {} AS r WHERE NOT EXISTS (SELECT 1 FROM {t} AS t WHERE {})",
                cols.join(", "),
                cols.iter()
                    .map(|c| format!("r.{c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                rec(1),
                keys(target)
            )
        }
        "delete" => format!(
            "DELETE FROM {t} AS t USING {} AS r, {} AS e WHERE {}{}",
            rec(1),
            rec(2),
            keys(target),
            guards(target, c)
        ),
        _ => format!(
            "UPDATE {t} AS t SET {} FROM {} AS r, {} AS e WHERE {}{}",
            c.changed
                .iter()
                .map(|f| format!("{0} = r.{0}", q(f)))
                .collect::<Vec<_>>()
                .join(", "),
            rec(1),
            rec(2),
            keys(target),
            guards(target, c)
        ),
    }
}

/// An insert whose key exists as a soft-deleted row brings that row back.
fn revive(target: &Target, c: &Correction, soft: &SoftTarget) -> String {
    let t = q(&target.table);
    let sets: Vec<String> = c
        .values
        .iter()
        .filter(|(k, _)| !target.key.contains(k))
        .map(|(k, _)| format!("{0} = r.{0}", q(k)))
        .collect();
    format!(
        "UPDATE {t} AS t SET {} FROM json_populate_record(NULL::{t}, $1::text::json) AS r WHERE {} AND {}",
        sets.join(", "),
        keys(target),
        soft_deleted(soft)
    )
}

/// The statement with the first correction's values shown, for `--dry-run`.
pub(crate) fn statement_text(target: &Target, c: &Correction) -> String {
    format!(
        "{};  -- $1 = {}{}",
        statement(target, c),
        json_of(&c.values),
        if c.expected.is_empty() {
            String::new()
        } else {
            format!(", $2 = {}", json_of(&c.expected))
        }
    )
}

impl Pg {
    pub(crate) async fn connect(system: &str, url: &str) -> Result<Self> {
        let (client, _connection) = crate::db::postgres::connect(system, url).await?;
        Ok(Pg {
            system: system.to_string(),
            client,
        })
    }

    fn fail(&self, what: &str, e: tokio_postgres::Error) -> Error {
        let detail = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string());
        if e.as_db_error().is_some() {
            Error::Usage(format!("apply to {}: {what}: {detail}", self.system))
        } else {
            Error::SourceUnavailable {
                system: self.system.clone(),
                message: format!("apply: {what}: {detail}"),
            }
        }
    }

    /// The columns of `table`, or a clear error when it does not exist.
    pub(crate) async fn columns(&self, table: &str) -> Result<Vec<String>> {
        let rows = self
            .client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                &[&q(table)],
            )
            .await
            .map_err(|e| self.fail(&format!("reading the columns of table {table}"), e))?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    pub(crate) async fn ensure_ledger(&mut self) -> Result<()> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (correction_id text PRIMARY KEY, job text NOT NULL, run_id text NOT NULL, entity text NOT NULL, op text NOT NULL, outcome text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        );
        self.client
            .batch_execute(&sql)
            .await
            .map_err(|e| self.fail("creating the ledger table", e))
    }

    pub(crate) async fn apply_batch(
        &mut self,
        ctx: &Ctx<'_>,
        target: &Target,
        batch: &[&Correction],
    ) -> Result<Vec<Outcome>> {
        let system = self.system.clone();
        let fail = |what: &str, e: tokio_postgres::Error| {
            let detail = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            Error::SourceUnavailable {
                system: system.clone(),
                message: format!("apply: {what}: {detail}"),
            }
        };
        let mut tx = self
            .client
            .transaction()
            .await
            .map_err(|e| fail("starting a transaction", e))?;
        let ids: Vec<&str> = batch.iter().map(|c| c.id.as_str()).collect();
        let seen: super::Seen = tx
            .query(
                &format!("SELECT correction_id FROM {LEDGER_TABLE} WHERE correction_id = ANY($1)"),
                &[&ids],
            )
            .await
            .map_err(|e| fail("reading the ledger", e))?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        let ledger = format!(
            "INSERT INTO {LEDGER_TABLE} (correction_id, job, run_id, entity, op, outcome) VALUES ($1, $2, $3, $4, $5, $6)"
        );
        let mut outcomes = Vec::with_capacity(batch.len());
        for c in batch {
            if seen.contains(&c.id) {
                outcomes.push(Outcome::AlreadyApplied);
                continue;
            }
            let sp = tx
                .savepoint("recon_correction")
                .await
                .map_err(|e| fail("savepoint", e))?;
            let values = json_of(&c.values);
            let expected = json_of(&c.expected);
            let result = async {
                let mut n = if c.op == "insert" {
                    sp.execute(&statement(target, c), &[&values]).await?
                } else {
                    sp.execute(&statement(target, c), &[&values, &expected])
                        .await?
                };
                if n == 0
                    && c.op == "insert"
                    && let Some(soft) = &target.soft
                {
                    n = sp.execute(&revive(target, c, soft), &[&values]).await?;
                }
                let outcome = if n > 0 {
                    Outcome::Applied
                } else {
                    Outcome::Stale
                };
                sp.execute(
                    &ledger,
                    &[
                        &c.id,
                        &ctx.job,
                        &ctx.run_id,
                        &target.entity,
                        &c.op,
                        &outcome.as_str(),
                    ],
                )
                .await?;
                Ok::<_, tokio_postgres::Error>(outcome)
            }
            .await;
            match result {
                Ok(o) => {
                    sp.commit()
                        .await
                        .map_err(|e| fail("releasing a savepoint", e))?;
                    outcomes.push(o);
                }
                Err(e) if e.as_db_error().is_some() => {
                    let msg = e
                        .as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_default();
                    sp.rollback()
                        .await
                        .map_err(|e| fail("rolling back a savepoint", e))?;
                    outcomes.push(Outcome::Failed(msg));
                }
                Err(e) => return Err(fail("applying a correction", e)),
            }
        }
        tx.commit()
            .await
            .map_err(|e| fail("committing a batch", e))?;
        Ok(outcomes)
    }

    /// Dry run: whether each correction's guard matches now; nothing is written.
    pub(crate) async fn check(
        &mut self,
        target: &Target,
        batch: &[&Correction],
    ) -> Result<Vec<Outcome>> {
        let t = q(&target.table);
        let mut out = Vec::with_capacity(batch.len());
        for c in batch {
            let values = json_of(&c.values);
            let expected = json_of(&c.expected);
            let matches: i64 = if c.op == "insert" {
                let sql = format!(
                    "SELECT count(*) FROM json_populate_record(NULL::{t}, $1::text::json) AS r WHERE NOT EXISTS (SELECT 1 FROM {t} AS t WHERE {})",
                    keys(target)
                );
                let n: i64 = self
                    .client
                    .query_one(&sql, &[&values])
                    .await
                    .map_err(|e| self.fail("dry run", e))?
                    .get(0);
                if n == 0
                    && let Some(soft) = &target.soft
                {
                    let sql = format!(
                        "SELECT count(*) FROM {t} AS t, json_populate_record(NULL::{t}, $1::text::json) AS r WHERE {} AND {}",
                        keys(target),
                        soft_deleted(soft)
                    );
                    self.client
                        .query_one(&sql, &[&values])
                        .await
                        .map_err(|e| self.fail("dry run", e))?
                        .get(0)
                } else {
                    n
                }
            } else {
                let sql = format!(
                    "SELECT count(*) FROM {t} AS t, json_populate_record(NULL::{t}, $1::text::json) AS r, json_populate_record(NULL::{t}, $2::text::json) AS e WHERE {}{}",
                    keys(target),
                    guards(target, c)
                );
                self.client
                    .query_one(&sql, &[&values, &expected])
                    .await
                    .map_err(|e| self.fail("dry run", e))?
                    .get(0)
            };
            out.push(if matches > 0 {
                Outcome::WouldApply
            } else {
                Outcome::Stale
            });
        }
        Ok(out)
    }
}
