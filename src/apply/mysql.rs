//! Applying corrections to MariaDB/MySQL: parameterised statements in the UTC session
//! time zone, null-safe guards with `<=>`, affected rows counted as matched rows.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, TxOpts};

use super::{Correction, Ctx, LEDGER_TABLE, Outcome, SoftTarget, Target};
use crate::error::{Error, Result};
use crate::export::quote_ident;

pub(crate) struct My {
    system: String,
    conn: Conn,
}

fn q(name: &str) -> String {
    quote_ident(name, '`')
}

fn key_where(target: &Target) -> String {
    target
        .key
        .iter()
        .map(|k| format!("{} = ?", q(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn guard_cols<'a>(target: &Target, c: &'a Correction) -> Vec<&'a (String, super::Value)> {
    target.guard_columns(c)
}

fn soft_deleted(s: &SoftTarget) -> String {
    match s.deleted_value {
        Some(v) => format!("{} = {}", q(&s.column), v as u8),
        None => format!("{} IS NOT NULL", q(&s.column)),
    }
}

/// The statement for one correction and its parameters.
fn statement(target: &Target, c: &Correction) -> (String, Vec<mysql_async::Value>) {
    let t = q(&target.table);
    let keys: Vec<mysql_async::Value> = target.key.iter().map(|k| c.value(k).to_mysql()).collect();
    let guards = guard_cols(target, c);
    let guard_sql: String = guards
        .iter()
        .map(|(col, _)| format!(" AND {} <=> ?", q(col)))
        .collect();
    let guard_params = guards.iter().map(|(_, v)| v.to_mysql());
    match c.op.as_str() {
        "insert" => (
            format!(
                "INSERT INTO {t} ({}) VALUES ({})",
                c.values
                    .iter()
                    .map(|(k, _)| q(k))
                    .collect::<Vec<_>>()
                    .join(", "),
                vec!["?"; c.values.len()].join(", ")
            ),
            c.values.iter().map(|(_, v)| v.to_mysql()).collect(),
        ),
        "delete" => (
            format!("DELETE FROM {t} WHERE {}{guard_sql}", key_where(target)),
            keys.into_iter().chain(guard_params).collect(),
        ),
        _ => (
            format!(
                "UPDATE {t} SET {} WHERE {}{guard_sql}",
                c.changed
                    .iter()
                    .map(|f| format!("{} = ?", q(f)))
                    .collect::<Vec<_>>()
                    .join(", "),
                key_where(target)
            ),
            c.changed
                .iter()
                .map(|f| c.value(f).to_mysql())
                .chain(keys)
                .chain(guard_params)
                .collect(),
        ),
    }
}

pub(crate) fn statement_text(target: &Target, c: &Correction) -> String {
    let (sql, params) = statement(target, c);
    format!(
        "{sql};  -- parameters: {}",
        params
            .iter()
            .map(|p| p.as_sql(false))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl My {
    pub(crate) async fn connect(system: &str, url: &str) -> Result<Self> {
        // Affected rows count matched rows, so an update to equal values is not "stale".
        let mut conn =
            crate::db::mysql::connect(system, url, |b| b.client_found_rows(true)).await?;
        conn.query_drop("SET SESSION time_zone = '+00:00'")
            .await
            .map_err(|e| Error::SourceUnavailable {
                system: system.to_string(),
                message: format!("MySQL: {e}"),
            })?;
        Ok(My {
            system: system.to_string(),
            conn,
        })
    }

    fn fail(&self, what: &str, e: mysql_async::Error) -> Error {
        Error::SourceUnavailable {
            system: self.system.clone(),
            message: format!("apply: {what}: {e}"),
        }
    }

    /// The columns of `table` (`db.table` or a table of the connection's database).
    pub(crate) async fn columns(&mut self, table: &str) -> Result<Vec<String>> {
        let (schema, name) = match table.split_once('.') {
            Some((s, t)) => (Some(s.to_string()), t.to_string()),
            None => (None, table.to_string()),
        };
        let r = self
            .conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
                (schema, name),
            )
            .await;
        r.map_err(|e| self.fail(&format!("reading the columns of table {table}"), e))
    }

    pub(crate) async fn ensure_ledger(&mut self) -> Result<()> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (correction_id varchar(32) PRIMARY KEY, job varchar(128) NOT NULL, run_id varchar(64) NOT NULL, entity varchar(128) NOT NULL, op varchar(16) NOT NULL, outcome varchar(16) NOT NULL, applied_at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB"
        );
        let r = self.conn.query_drop(sql).await;
        r.map_err(|e| self.fail("creating the ledger table", e))
    }

    pub(crate) async fn apply_batch(
        &mut self,
        ctx: &Ctx<'_>,
        target: &Target,
        batch: &[&Correction],
    ) -> Result<Vec<Outcome>> {
        let system = self.system.clone();
        let fail = |what: &str, e: mysql_async::Error| Error::SourceUnavailable {
            system: system.clone(),
            message: format!("apply: {what}: {e}"),
        };
        let mut tx = self
            .conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(|e| fail("starting a transaction", e))?;
        let placeholders = vec!["?"; batch.len()].join(", ");
        let ids: Vec<mysql_async::Value> = batch
            .iter()
            .map(|c| mysql_async::Value::from(c.id.as_str()))
            .collect();
        let seen: super::Seen = tx
            .exec::<String, _, _>(
                format!("SELECT correction_id FROM {LEDGER_TABLE} WHERE correction_id IN ({placeholders})"),
                ids,
            )
            .await
            .map_err(|e| fail("reading the ledger", e))?
            .into_iter()
            .collect();
        let ledger = format!(
            "INSERT INTO {LEDGER_TABLE} (correction_id, job, run_id, entity, op, outcome) VALUES (?, ?, ?, ?, ?, ?)"
        );
        let mut outcomes = Vec::with_capacity(batch.len());
        for c in batch {
            if seen.contains(&c.id) {
                outcomes.push(Outcome::AlreadyApplied);
                continue;
            }
            tx.query_drop("SAVEPOINT recon_correction")
                .await
                .map_err(|e| fail("savepoint", e))?;
            let result: std::result::Result<Outcome, mysql_async::Error> = async {
                let n = if c.op == "insert" {
                    let keys: Vec<mysql_async::Value> =
                        target.key.iter().map(|k| c.value(k).to_mysql()).collect();
                    let exists: Option<u8> = tx
                        .exec_first(
                            format!(
                                "SELECT 1 FROM {} WHERE {} LIMIT 1 FOR UPDATE",
                                q(&target.table),
                                key_where(target)
                            ),
                            keys.clone(),
                        )
                        .await?;
                    match (exists, &target.soft) {
                        (None, _) => {
                            let (sql, params) = statement(target, c);
                            tx.exec_drop(sql, params).await?;
                            tx.affected_rows()
                        }
                        (Some(_), Some(soft)) => {
                            let cols: Vec<&(String, super::Value)> = c
                                .values
                                .iter()
                                .filter(|(k, _)| !target.key.contains(k))
                                .collect();
                            let sql = format!(
                                "UPDATE {} SET {} WHERE {} AND {}",
                                q(&target.table),
                                cols.iter()
                                    .map(|(k, _)| format!("{} = ?", q(k)))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                key_where(target),
                                soft_deleted(soft)
                            );
                            let params: Vec<mysql_async::Value> =
                                cols.iter().map(|(_, v)| v.to_mysql()).chain(keys).collect();
                            tx.exec_drop(sql, params).await?;
                            tx.affected_rows()
                        }
                        (Some(_), None) => 0,
                    }
                } else {
                    let (sql, params) = statement(target, c);
                    tx.exec_drop(sql, params).await?;
                    tx.affected_rows()
                };
                let outcome = if n > 0 {
                    Outcome::Applied
                } else {
                    Outcome::Stale
                };
                tx.exec_drop(
                    ledger.as_str(),
                    (
                        c.id.as_str(),
                        ctx.job,
                        ctx.run_id,
                        target.entity.as_str(),
                        c.op.as_str(),
                        outcome.as_str(),
                    ),
                )
                .await?;
                Ok(outcome)
            }
            .await;
            match result {
                Ok(o) => {
                    tx.query_drop("RELEASE SAVEPOINT recon_correction")
                        .await
                        .map_err(|e| fail("savepoint", e))?;
                    outcomes.push(o);
                }
                Err(mysql_async::Error::Server(s)) => {
                    tx.query_drop("ROLLBACK TO SAVEPOINT recon_correction")
                        .await
                        .map_err(|e| fail("rolling back a savepoint", e))?;
                    outcomes.push(Outcome::Failed(s.message.clone()));
                }
                Err(e) => return Err(fail("applying a correction", e)),
            }
        }
        tx.commit()
            .await
            .map_err(|e| fail("committing a batch", e))?;
        Ok(outcomes)
    }

    pub(crate) async fn check(
        &mut self,
        target: &Target,
        batch: &[&Correction],
    ) -> Result<Vec<Outcome>> {
        let mut out = Vec::with_capacity(batch.len());
        for c in batch {
            let keys: Vec<mysql_async::Value> =
                target.key.iter().map(|k| c.value(k).to_mysql()).collect();
            let t = q(&target.table);
            let n: Option<u64> = if c.op == "insert" {
                let exists: Option<u64> = self
                    .conn
                    .exec_first(
                        format!("SELECT count(*) FROM {t} WHERE {}", key_where(target)),
                        keys.clone(),
                    )
                    .await
                    .map_err(|e| Error::SourceUnavailable {
                        system: self.system.clone(),
                        message: e.to_string(),
                    })?;
                match (exists, &target.soft) {
                    (Some(0), _) => Some(1),
                    (_, Some(soft)) => self
                        .conn
                        .exec_first(
                            format!(
                                "SELECT count(*) FROM {t} WHERE {} AND {}",
                                key_where(target),
                                soft_deleted(soft)
                            ),
                            keys,
                        )
                        .await
                        .map_err(|e| Error::SourceUnavailable {
                            system: self.system.clone(),
                            message: e.to_string(),
                        })?,
                    _ => Some(0),
                }
            } else {
                let guards = guard_cols(target, c);
                let sql = format!(
                    "SELECT count(*) FROM {t} WHERE {}{}",
                    key_where(target),
                    guards
                        .iter()
                        .map(|(col, _)| format!(" AND {} <=> ?", q(col)))
                        .collect::<String>()
                );
                let params: Vec<mysql_async::Value> = keys
                    .into_iter()
                    .chain(guards.iter().map(|(_, v)| v.to_mysql()))
                    .collect();
                self.conn
                    .exec_first(sql, params)
                    .await
                    .map_err(|e| Error::SourceUnavailable {
                        system: self.system.clone(),
                        message: e.to_string(),
                    })?
            };
            out.push(if n.unwrap_or(0) > 0 {
                Outcome::WouldApply
            } else {
                Outcome::Stale
            });
        }
        Ok(out)
    }
}
