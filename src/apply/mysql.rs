//! Applying corrections to MariaDB/MySQL: parameterised statements in the UTC session
//! time zone, null-safe guards with `<=>`, affected rows counted as matched rows. An
//! insert first locks its key's row, so it needs no NOT EXISTS.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, TxOpts};

use super::batch::{Dialect, Transaction};
use super::{Correction, Ctx, LEDGER_TABLE, Outcome, Seen, SoftTarget, Target, Value};
use crate::error::{Error, Result};
use crate::export::quote_ident;
use crate::template::render;
use crate::write::vocabulary::Op;

const SESSION_TIME_ZONE: &str = include_str!("../../queries/apply/mysql/session_time_zone.sql");
const COLUMNS: &str = include_str!("../../queries/apply/mysql/columns.sql");
const CREATE_LEDGER: &str = include_str!("../../queries/apply/mysql/create_ledger.sql");
const LEDGER_SEEN: &str = include_str!("../../queries/apply/mysql/ledger_seen.sql");
const LEDGER_RECORD: &str = include_str!("../../queries/apply/mysql/ledger_record.sql");
const SAVEPOINT: &str = include_str!("../../queries/apply/mysql/savepoint.sql");
const RELEASE_SAVEPOINT: &str = include_str!("../../queries/apply/mysql/release_savepoint.sql");
const ROLLBACK_TO_SAVEPOINT: &str =
    include_str!("../../queries/apply/mysql/rollback_to_savepoint.sql");
const LOCK_KEY: &str = include_str!("../../queries/apply/mysql/lock_key.sql");
const INSERT: &str = include_str!("../../queries/apply/mysql/insert.sql");
const UPDATE: &str = include_str!("../../queries/apply/mysql/update.sql");
const DELETE: &str = include_str!("../../queries/apply/mysql/delete.sql");
const REVIVE: &str = include_str!("../../queries/apply/mysql/revive.sql");
const CHECK_KEY: &str = include_str!("../../queries/apply/mysql/check_key.sql");
const CHECK_REVIVE: &str = include_str!("../../queries/apply/mysql/check_revive.sql");
const CHECK_GUARDED: &str = include_str!("../../queries/apply/mysql/check_guarded.sql");

pub(crate) struct My {
    system: String,
    conn: Conn,
}

fn q(name: &str) -> String {
    quote_ident(name, '`')
}

/// `?, ?, …`: `n` placeholders.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// `<key> = ? AND …`, bound to [`key_params`].
fn key_match(target: &Target) -> String {
    target
        .key
        .iter()
        .map(|k| format!("{} = ?", q(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn key_params(target: &Target, c: &Correction) -> Vec<mysql_async::Value> {
    target.key.iter().map(|k| c.value(k).to_mysql()).collect()
}

/// `<column> = ?` for each column.
fn assignments<'a>(columns: impl IntoIterator<Item = &'a String>) -> String {
    columns
        .into_iter()
        .map(|k| format!("{} = ?", q(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// ` AND <column> <=> ?` for each guard column.
fn guards(guard: &[&(String, Value)]) -> String {
    guard
        .iter()
        .map(|(col, _)| format!(" AND {} <=> ?", q(col)))
        .collect()
}

fn soft_deleted(s: &SoftTarget) -> String {
    match s.deleted_value {
        Some(v) => format!("{} = {}", q(&s.column), v as u8),
        None => format!("{} IS NOT NULL", q(&s.column)),
    }
}

/// The statement for one correction and its parameters.
fn statement(target: &Target, c: &Correction) -> (String, Vec<mysql_async::Value>) {
    let table = q(&target.table);
    let keys = key_params(target, c);
    let guard = target.guard_columns(c);
    let guard_params = guard.iter().map(|(_, v)| v.to_mysql());
    match c.op {
        Op::Insert => (
            render(
                INSERT,
                &[
                    ("table", &table),
                    (
                        "columns",
                        &c.values
                            .iter()
                            .map(|(k, _)| q(k))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                    ("placeholders", &placeholders(c.values.len())),
                ],
            ),
            c.values.iter().map(|(_, v)| v.to_mysql()).collect(),
        ),
        Op::Delete => (
            render(
                DELETE,
                &[
                    ("table", &table),
                    ("key_match", &key_match(target)),
                    ("guards", &guards(&guard)),
                ],
            ),
            keys.into_iter().chain(guard_params).collect(),
        ),
        Op::Update | Op::SoftDelete => (
            render(
                UPDATE,
                &[
                    ("table", &table),
                    ("assignments", &assignments(&c.changed)),
                    ("key_match", &key_match(target)),
                    ("guards", &guards(&guard)),
                ],
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

/// An insert whose key exists as a soft-deleted row brings that row back.
fn revive(
    target: &Target,
    c: &Correction,
    soft: &SoftTarget,
    keys: Vec<mysql_async::Value>,
) -> (String, Vec<mysql_async::Value>) {
    let cols: Vec<&(String, Value)> = c
        .values
        .iter()
        .filter(|(k, _)| !target.key.contains(k))
        .collect();
    let sql = render(
        REVIVE,
        &[
            ("table", &q(&target.table)),
            ("assignments", &assignments(cols.iter().map(|(k, _)| k))),
            ("key_match", &key_match(target)),
            ("soft_deleted", &soft_deleted(soft)),
        ],
    );
    let params = cols.iter().map(|(_, v)| v.to_mysql()).chain(keys).collect();
    (sql, params)
}

/// Before an insert: whether the key exists, locking its row.
fn lock_key(target: &Target) -> String {
    render(
        LOCK_KEY,
        &[
            ("table", &q(&target.table)),
            ("key_match", &key_match(target)),
        ],
    )
}

/// Dry run of an insert: how many rows hold the key.
fn check_key(target: &Target) -> String {
    render(
        CHECK_KEY,
        &[
            ("table", &q(&target.table)),
            ("key_match", &key_match(target)),
        ],
    )
}

/// Dry run of a revival: how many rows hold the key soft-deleted.
fn check_revive(target: &Target, soft: &SoftTarget) -> String {
    render(
        CHECK_REVIVE,
        &[
            ("table", &q(&target.table)),
            ("key_match", &key_match(target)),
            ("soft_deleted", &soft_deleted(soft)),
        ],
    )
}

/// Dry run of an update or delete, with its parameters: 1 when the row still holds what
/// the snapshot saw.
fn check_guarded(
    target: &Target,
    c: &Correction,
    keys: Vec<mysql_async::Value>,
) -> (String, Vec<mysql_async::Value>) {
    let guard = target.guard_columns(c);
    let sql = render(
        CHECK_GUARDED,
        &[
            ("table", &q(&target.table)),
            ("key_match", &key_match(target)),
            ("guards", &guards(&guard)),
        ],
    );
    let params = keys
        .into_iter()
        .chain(guard.iter().map(|(_, v)| v.to_mysql()))
        .collect();
    (sql, params)
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

/// The connection failed (or the database, inside a batch), `message` naming the step.
fn unavailable(system: &str, message: String, e: mysql_async::Error) -> Error {
    Error::Database {
        system: system.to_string(),
        message,
        source: Box::new(e),
    }
}

impl My {
    pub(crate) async fn connect(system: &str, url: &str) -> Result<Self> {
        // Affected rows count matched rows, so an update to equal values is not "stale".
        let mut conn =
            crate::db::mysql::connect(system, url, |b| b.client_found_rows(true)).await?;
        conn.query_drop(render(SESSION_TIME_ZONE, &[]))
            .await
            .map_err(|e| unavailable(system, format!("MySQL: {e}"), e))?;
        Ok(My {
            system: system.to_string(),
            conn,
        })
    }

    fn fail(&self, what: &str, e: mysql_async::Error) -> Error {
        unavailable(&self.system, format!("apply: {what}: {e}"), e)
    }

    /// Dry run: the count a check query returns.
    async fn count(&mut self, sql: String, params: Vec<mysql_async::Value>) -> Result<Option<u64>> {
        let r = self.conn.exec_first(sql, params).await;
        r.map_err(|e| unavailable(&self.system, e.to_string(), e))
    }
}

impl Dialect for My {
    type Tx<'a> = MyTx<'a>;

    /// The columns of `table` (`db.table` or a table of the connection's database).
    async fn columns(&mut self, table: &str) -> Result<Vec<String>> {
        let (schema, name) = match table.split_once('.') {
            Some((s, t)) => (Some(s.to_string()), t.to_string()),
            None => (None, table.to_string()),
        };
        let r = self.conn.exec(render(COLUMNS, &[]), (schema, name)).await;
        r.map_err(|e| self.fail(&format!("reading the columns of table {table}"), e))
    }

    async fn ensure_ledger(&mut self) -> Result<()> {
        let sql = render(CREATE_LEDGER, &[("ledger", LEDGER_TABLE)]);
        let r = self.conn.query_drop(sql).await;
        r.map_err(|e| self.fail("creating the ledger table", e))
    }

    async fn begin(&mut self) -> Result<MyTx<'_>> {
        let My { system, conn } = self;
        let tx = conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(|e| unavailable(system, format!("apply: starting a transaction: {e}"), e))?;
        Ok(MyTx { system, tx })
    }

    async fn matches(&mut self, target: &Target, c: &Correction) -> Result<bool> {
        let keys = key_params(target, c);
        let n = if c.op == Op::Insert {
            let exists = self.count(check_key(target), keys.clone()).await?;
            match (exists, &target.soft) {
                (Some(0), _) => Some(1),
                (_, Some(soft)) => self.count(check_revive(target, soft), keys).await?,
                _ => Some(0),
            }
        } else {
            let (sql, params) = check_guarded(target, c, keys);
            self.count(sql, params).await?
        };
        Ok(n.unwrap_or(0) > 0)
    }

    fn statement_text(target: &Target, c: &Correction) -> String {
        statement_text(target, c)
    }
}

/// One batch's transaction.
pub(crate) struct MyTx<'a> {
    system: &'a str,
    tx: mysql_async::Transaction<'a>,
}

impl MyTx<'_> {
    async fn run(&mut self, template: &str, what: &str) -> Result<()> {
        let r = self.tx.query_drop(render(template, &[])).await;
        r.map_err(|e| self.fail(what, e))
    }

    /// Runs a correction's statement: the rows it touched.
    async fn touch(
        &mut self,
        (sql, params): (String, Vec<mysql_async::Value>),
    ) -> Result<u64, mysql_async::Error> {
        self.tx.exec_drop(sql, params).await?;
        Ok(self.tx.affected_rows())
    }
}

impl Transaction for MyTx<'_> {
    type DbError = mysql_async::Error;

    async fn seen(&mut self, ids: &[&str]) -> Result<Seen> {
        let sql = render(
            LEDGER_SEEN,
            &[
                ("ledger", LEDGER_TABLE),
                ("placeholders", &placeholders(ids.len())),
            ],
        );
        let params: Vec<mysql_async::Value> =
            ids.iter().map(|&id| mysql_async::Value::from(id)).collect();
        let r = self.tx.exec::<String, _, _>(sql, params).await;
        Ok(r.map_err(|e| self.fail("reading the ledger", e))?
            .into_iter()
            .collect())
    }

    async fn savepoint(&mut self) -> Result<()> {
        self.run(SAVEPOINT, "savepoint").await
    }

    async fn release_savepoint(&mut self) -> Result<()> {
        self.run(RELEASE_SAVEPOINT, "savepoint").await
    }

    async fn rollback_to_savepoint(&mut self) -> Result<()> {
        self.run(ROLLBACK_TO_SAVEPOINT, "rolling back a savepoint")
            .await
    }

    async fn apply(&mut self, target: &Target, c: &Correction) -> Result<u64, mysql_async::Error> {
        if c.op != Op::Insert {
            return self.touch(statement(target, c)).await;
        }
        let keys = key_params(target, c);
        let exists: Option<u8> = self.tx.exec_first(lock_key(target), keys.clone()).await?;
        match (exists, &target.soft) {
            (None, _) => self.touch(statement(target, c)).await,
            (Some(_), Some(soft)) => self.touch(revive(target, c, soft, keys)).await,
            (Some(_), None) => Ok(0),
        }
    }

    async fn record(
        &mut self,
        ctx: &Ctx<'_>,
        target: &Target,
        c: &Correction,
        outcome: &Outcome,
    ) -> Result<(), mysql_async::Error> {
        self.tx
            .exec_drop(
                render(LEDGER_RECORD, &[("ledger", LEDGER_TABLE)]),
                (
                    c.id.as_str(),
                    ctx.job,
                    ctx.run_id,
                    target.entity.as_str(),
                    c.op.as_str(),
                    outcome.as_str(),
                ),
            )
            .await
    }

    fn refusal(e: &mysql_async::Error) -> Option<String> {
        match e {
            mysql_async::Error::Server(s) => Some(s.message.clone()),
            _ => None,
        }
    }

    fn fail(&self, what: &str, e: mysql_async::Error) -> Error {
        unavailable(self.system, format!("apply: {what}: {e}"), e)
    }

    async fn commit(self) -> Result<()> {
        let system = self.system;
        self.tx
            .commit()
            .await
            .map_err(|e| unavailable(system, format!("apply: committing a batch: {e}"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::value::Value;

    /// A table in a schema, a two-column key, a soft-delete column and no version.
    fn target() -> Target {
        Target {
            entity: "orders".into(),
            table: "shop.orders".into(),
            key: vec!["id".into(), "tenant".into()],
            soft: Some(SoftTarget {
                column: "deleted".into(),
                deleted_value: Some(true),
            }),
            version: None,
            corrections: vec![],
        }
    }

    fn correction(op: &str) -> Correction {
        let row = vec![
            ("id".to_string(), Value::Int(1)),
            ("tenant".to_string(), Value::Text("a".into())),
            ("name".to_string(), Value::Text("x".into())),
            ("deleted".to_string(), Value::Bool(false)),
        ];
        Correction {
            id: "c1".into(),
            op: op.parse().unwrap(),
            changed: vec!["name".into()],
            expected: if op == "insert" {
                vec![]
            } else {
                vec![
                    ("id".to_string(), Value::Int(1)),
                    ("tenant".to_string(), Value::Text("a".into())),
                    ("name".to_string(), Value::Text("w".into())),
                    ("deleted".to_string(), Value::Null),
                ]
            },
            values: row,
        }
    }

    /// The statements apply runs and their parameters, pinned: a refactoring must not
    /// change them.
    #[test]
    fn statements_are_pinned() {
        let t = target();
        assert_eq!(
            statement_text(&t, &correction("insert")),
            "INSERT INTO `shop`.`orders` (`id`, `tenant`, `name`, `deleted`) VALUES (?, ?, ?, ?);  -- parameters: 1, 'a', 'x', 0"
        );
        assert_eq!(
            statement_text(&t, &correction("update")),
            "UPDATE `shop`.`orders` SET `name` = ? WHERE `id` = ? AND `tenant` = ? AND `name` <=> ? AND `deleted` <=> ?;  -- parameters: 'x', 1, 'a', 'w', NULL"
        );
        assert_eq!(
            statement_text(&t, &correction("soft_delete")),
            statement_text(&t, &correction("update"))
        );
        assert_eq!(
            statement_text(&t, &correction("delete")),
            "DELETE FROM `shop`.`orders` WHERE `id` = ? AND `tenant` = ? AND `name` <=> ? AND `deleted` <=> ?;  -- parameters: 1, 'a', 'w', NULL"
        );
        let versioned = Target {
            version: Some("name".into()),
            ..target()
        };
        assert_eq!(
            statement_text(&versioned, &correction("delete")),
            "DELETE FROM `shop`.`orders` WHERE `id` = ? AND `tenant` = ? AND `name` <=> ?;  -- parameters: 1, 'a', 'w'"
        );
        assert_eq!(soft_deleted(t.soft.as_ref().unwrap()), "`deleted` = 1");
        let ledger = |template| render(template, &[("ledger", LEDGER_TABLE)]);
        assert_eq!(
            render(SESSION_TIME_ZONE, &[]),
            "SET SESSION time_zone = '+00:00'"
        );
        assert_eq!(
            render(COLUMNS, &[]),
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?"
        );
        assert_eq!(
            ledger(CREATE_LEDGER),
            "CREATE TABLE IF NOT EXISTS recon_applied (correction_id varchar(32) PRIMARY KEY, job varchar(128) NOT NULL, run_id varchar(64) NOT NULL, entity varchar(128) NOT NULL, op varchar(16) NOT NULL, outcome varchar(16) NOT NULL, applied_at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB"
        );
        assert_eq!(
            render(
                LEDGER_SEEN,
                &[("ledger", LEDGER_TABLE), ("placeholders", &placeholders(3))]
            ),
            "SELECT correction_id FROM recon_applied WHERE correction_id IN (?, ?, ?)"
        );
        assert_eq!(
            ledger(LEDGER_RECORD),
            "INSERT INTO recon_applied (correction_id, job, run_id, entity, op, outcome) VALUES (?, ?, ?, ?, ?, ?)"
        );
        assert_eq!(render(SAVEPOINT, &[]), "SAVEPOINT recon_correction");
        assert_eq!(
            render(RELEASE_SAVEPOINT, &[]),
            "RELEASE SAVEPOINT recon_correction"
        );
        assert_eq!(
            render(ROLLBACK_TO_SAVEPOINT, &[]),
            "ROLLBACK TO SAVEPOINT recon_correction"
        );
        assert_eq!(
            lock_key(&t),
            "SELECT 1 FROM `shop`.`orders` WHERE `id` = ? AND `tenant` = ? LIMIT 1 FOR UPDATE"
        );
        let (sql, params) = revive(
            &t,
            &correction("insert"),
            t.soft.as_ref().unwrap(),
            key_params(&t, &correction("insert")),
        );
        assert_eq!(
            sql,
            "UPDATE `shop`.`orders` SET `name` = ?, `deleted` = ? WHERE `id` = ? AND `tenant` = ? AND `deleted` = 1"
        );
        assert_eq!(
            params,
            [
                mysql_async::Value::from("x"),
                mysql_async::Value::Int(0),
                mysql_async::Value::Int(1),
                mysql_async::Value::from("a"),
            ]
        );
        assert_eq!(
            check_key(&t),
            "SELECT count(*) FROM `shop`.`orders` WHERE `id` = ? AND `tenant` = ?"
        );
        assert_eq!(
            check_revive(&t, t.soft.as_ref().unwrap()),
            "SELECT count(*) FROM `shop`.`orders` WHERE `id` = ? AND `tenant` = ? AND `deleted` = 1"
        );
        let (sql, params) = check_guarded(
            &t,
            &correction("update"),
            key_params(&t, &correction("update")),
        );
        assert_eq!(
            sql,
            "SELECT count(*) FROM `shop`.`orders` WHERE `id` = ? AND `tenant` = ? AND `name` <=> ? AND `deleted` <=> ?"
        );
        assert_eq!(params.len(), 4);
    }
}
