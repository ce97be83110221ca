//! Applying corrections to PostgreSQL. Values travel as one JSON object per row and
//! `json_populate_record(NULL::table, $1)` turns them into the table's own column types,
//! so no value is ever spliced into SQL. A statement's row count is what it touched.

use super::batch::{Dialect, Transaction};
use super::{Correction, Ctx, LEDGER_TABLE, Outcome, Seen, SoftTarget, Target, Value};
use crate::error::{Error, Result};
use crate::export::quote_ident;
use crate::template::render;
use crate::write::vocabulary::Op;

const COLUMNS: &str = include_str!("../../queries/apply/postgres/columns.sql");
const CREATE_LEDGER: &str = include_str!("../../queries/apply/postgres/create_ledger.sql");
const LEDGER_SEEN: &str = include_str!("../../queries/apply/postgres/ledger_seen.sql");
const LEDGER_RECORD: &str = include_str!("../../queries/apply/postgres/ledger_record.sql");
const SAVEPOINT: &str = include_str!("../../queries/apply/postgres/savepoint.sql");
const RELEASE_SAVEPOINT: &str = include_str!("../../queries/apply/postgres/release_savepoint.sql");
const ROLLBACK_TO_SAVEPOINT: &str =
    include_str!("../../queries/apply/postgres/rollback_to_savepoint.sql");
const INSERT: &str = include_str!("../../queries/apply/postgres/insert.sql");
const UPDATE: &str = include_str!("../../queries/apply/postgres/update.sql");
const DELETE: &str = include_str!("../../queries/apply/postgres/delete.sql");
const REVIVE: &str = include_str!("../../queries/apply/postgres/revive.sql");
const CHECK_INSERT: &str = include_str!("../../queries/apply/postgres/check_insert.sql");
const CHECK_REVIVE: &str = include_str!("../../queries/apply/postgres/check_revive.sql");
const CHECK_GUARDED: &str = include_str!("../../queries/apply/postgres/check_guarded.sql");

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

/// `<column> = r.<column>` for each column.
fn assignments<'a>(columns: impl IntoIterator<Item = &'a String>) -> String {
    columns
        .into_iter()
        .map(|k| format!("{0} = r.{0}", q(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn soft_deleted(s: &SoftTarget) -> String {
    match s.deleted_value {
        Some(v) => format!("t.{} = {v}", q(&s.column)),
        None => format!("t.{} IS NOT NULL", q(&s.column)),
    }
}

/// The statement for one correction: `$1` is the new row, `$2` the expected row.
pub(crate) fn statement(target: &Target, c: &Correction) -> String {
    let table = q(&target.table);
    let key_match = keys(target);
    match c.op {
        Op::Insert => {
            let cols: Vec<String> = c.values.iter().map(|(k, _)| q(k)).collect();
            let row_cols: Vec<String> = cols.iter().map(|c| format!("r.{c}")).collect();
            render(
                INSERT,
                &[
                    ("table", &table),
                    ("columns", &cols.join(", ")),
                    ("row_columns", &row_cols.join(", ")),
                    ("key_match", &key_match),
                ],
            )
        }
        Op::Delete => render(
            DELETE,
            &[
                ("table", &table),
                ("key_match", &key_match),
                ("guards", &guards(target, c)),
            ],
        ),
        Op::Update | Op::SoftDelete => render(
            UPDATE,
            &[
                ("table", &table),
                ("assignments", &assignments(&c.changed)),
                ("key_match", &key_match),
                ("guards", &guards(target, c)),
            ],
        ),
    }
}

/// An insert whose key exists as a soft-deleted row brings that row back.
fn revive(target: &Target, c: &Correction, soft: &SoftTarget) -> String {
    render(
        REVIVE,
        &[
            ("table", &q(&target.table)),
            (
                "assignments",
                &assignments(
                    c.values
                        .iter()
                        .map(|(k, _)| k)
                        .filter(|k| !target.key.contains(k)),
                ),
            ),
            ("key_match", &keys(target)),
            ("soft_deleted", &soft_deleted(soft)),
        ],
    )
}

/// Dry run of an insert: 1 when the key is absent.
fn check_insert(target: &Target) -> String {
    render(
        CHECK_INSERT,
        &[("table", &q(&target.table)), ("key_match", &keys(target))],
    )
}

/// Dry run of a revival: 1 when the key exists as a soft-deleted row.
fn check_revive(target: &Target, soft: &SoftTarget) -> String {
    render(
        CHECK_REVIVE,
        &[
            ("table", &q(&target.table)),
            ("key_match", &keys(target)),
            ("soft_deleted", &soft_deleted(soft)),
        ],
    )
}

/// Dry run of an update or delete: 1 when the row still holds what the snapshot saw.
fn check_guarded(target: &Target, c: &Correction) -> String {
    render(
        CHECK_GUARDED,
        &[
            ("table", &q(&target.table)),
            ("key_match", &keys(target)),
            ("guards", &guards(target, c)),
        ],
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

/// The database's message for an error it raised, else the driver's.
fn detail(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// An apply step failed on the connection (or the database, inside a batch).
fn unavailable(system: &str, what: &str, e: tokio_postgres::Error) -> Error {
    Error::Database {
        system: system.to_string(),
        message: format!("apply: {what}: {}", detail(&e)),
        source: Box::new(e),
    }
}

impl Pg {
    pub(crate) async fn connect(system: &str, url: &str) -> Result<Self> {
        let (client, _connection) = crate::db::postgres::connect(system, url).await?;
        Ok(Pg {
            system: system.to_string(),
            client,
        })
    }

    /// Outside a batch: the database refusing a statement is the job's or the grants'
    /// problem, anything else the connection's.
    fn fail(&self, what: &str, e: tokio_postgres::Error) -> Error {
        if e.as_db_error().is_some() {
            Error::DatabaseRefused {
                system: self.system.clone(),
                message: format!("{what}: {}", detail(&e)),
                source: Box::new(e),
            }
        } else {
            unavailable(&self.system, what, e)
        }
    }

    async fn count(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<i64> {
        Ok(self
            .client
            .query_one(sql, params)
            .await
            .map_err(|e| self.fail("dry run", e))?
            .get(0))
    }
}

impl Dialect for Pg {
    type Tx<'a> = PgTx<'a>;

    async fn columns(&mut self, table: &str) -> Result<Vec<String>> {
        let rows = self
            .client
            .query(&render(COLUMNS, &[]), &[&q(table)])
            .await
            .map_err(|e| self.fail(&format!("reading the columns of table {table}"), e))?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    async fn ensure_ledger(&mut self) -> Result<()> {
        self.client
            .batch_execute(&render(CREATE_LEDGER, &[("ledger", LEDGER_TABLE)]))
            .await
            .map_err(|e| self.fail("creating the ledger table", e))
    }

    async fn begin(&mut self) -> Result<PgTx<'_>> {
        let Pg { system, client } = self;
        let tx = client
            .transaction()
            .await
            .map_err(|e| unavailable(system, "starting a transaction", e))?;
        Ok(PgTx { system, tx })
    }

    async fn matches(&mut self, target: &Target, c: &Correction) -> Result<bool> {
        let values = json_of(&c.values);
        let matches = if c.op == Op::Insert {
            let n = self.count(&check_insert(target), &[&values]).await?;
            if n == 0
                && let Some(soft) = &target.soft
            {
                self.count(&check_revive(target, soft), &[&values]).await?
            } else {
                n
            }
        } else {
            let expected = json_of(&c.expected);
            self.count(&check_guarded(target, c), &[&values, &expected])
                .await?
        };
        Ok(matches > 0)
    }

    fn statement_text(target: &Target, c: &Correction) -> String {
        statement_text(target, c)
    }
}

/// One batch's transaction. Savepoints are the statements the driver's own savepoint
/// sends (`SAVEPOINT`, `RELEASE`, `ROLLBACK TO`), on the batch's transaction.
pub(crate) struct PgTx<'a> {
    system: &'a str,
    tx: tokio_postgres::Transaction<'a>,
}

impl PgTx<'_> {
    async fn run(&mut self, template: &str, what: &str) -> Result<()> {
        self.tx
            .batch_execute(&render(template, &[]))
            .await
            .map_err(|e| unavailable(self.system, what, e))
    }
}

impl Transaction for PgTx<'_> {
    type DbError = tokio_postgres::Error;

    async fn seen(&mut self, ids: &[&str]) -> Result<Seen> {
        Ok(self
            .tx
            .query(&render(LEDGER_SEEN, &[("ledger", LEDGER_TABLE)]), &[&ids])
            .await
            .map_err(|e| unavailable(self.system, "reading the ledger", e))?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect())
    }

    async fn savepoint(&mut self) -> Result<()> {
        self.run(SAVEPOINT, "savepoint").await
    }

    async fn release_savepoint(&mut self) -> Result<()> {
        self.run(RELEASE_SAVEPOINT, "releasing a savepoint").await
    }

    async fn rollback_to_savepoint(&mut self) -> Result<()> {
        self.run(ROLLBACK_TO_SAVEPOINT, "rolling back a savepoint")
            .await
    }

    async fn apply(
        &mut self,
        target: &Target,
        c: &Correction,
    ) -> Result<u64, tokio_postgres::Error> {
        let values = json_of(&c.values);
        let mut n = if c.op == Op::Insert {
            self.tx.execute(&statement(target, c), &[&values]).await?
        } else {
            let expected = json_of(&c.expected);
            self.tx
                .execute(&statement(target, c), &[&values, &expected])
                .await?
        };
        if n == 0
            && c.op == Op::Insert
            && let Some(soft) = &target.soft
        {
            n = self
                .tx
                .execute(&revive(target, c, soft), &[&values])
                .await?;
        }
        Ok(n)
    }

    async fn record(
        &mut self,
        ctx: &Ctx<'_>,
        target: &Target,
        c: &Correction,
        outcome: &Outcome,
    ) -> Result<(), tokio_postgres::Error> {
        self.tx
            .execute(
                &render(LEDGER_RECORD, &[("ledger", LEDGER_TABLE)]),
                &[
                    &c.id,
                    &ctx.job,
                    &ctx.run_id,
                    &target.entity,
                    &c.op.as_str(),
                    &outcome.as_str(),
                ],
            )
            .await?;
        Ok(())
    }

    fn refusal(e: &tokio_postgres::Error) -> Option<String> {
        e.as_db_error().map(|d| d.message().to_string())
    }

    fn fail(&self, what: &str, e: tokio_postgres::Error) -> Error {
        unavailable(self.system, what, e)
    }

    async fn commit(self) -> Result<()> {
        let system = self.system;
        self.tx
            .commit()
            .await
            .map_err(|e| unavailable(system, "committing a batch", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            expected: if op == "insert" { vec![] } else { row.clone() },
            values: row,
        }
    }

    /// The statements apply runs, pinned: a refactoring must not change them.
    #[test]
    fn statements_are_pinned() {
        let t = target();
        assert_eq!(
            statement(&t, &correction("insert")),
            r#"INSERT INTO "shop"."orders" ("id", "tenant", "name", "deleted") SELECT r."id", r."tenant", r."name", r."deleted" FROM json_populate_record(NULL::"shop"."orders", $1::text::json) AS r WHERE NOT EXISTS (SELECT 1 FROM "shop"."orders" AS t WHERE t."id" = r."id" AND t."tenant" = r."tenant")"#
        );
        assert_eq!(
            statement(&t, &correction("update")),
            r#"UPDATE "shop"."orders" AS t SET "name" = r."name" FROM json_populate_record(NULL::"shop"."orders", $1::text::json) AS r, json_populate_record(NULL::"shop"."orders", $2::text::json) AS e WHERE t."id" = r."id" AND t."tenant" = r."tenant" AND t."name" IS NOT DISTINCT FROM e."name" AND t."deleted" IS NOT DISTINCT FROM e."deleted""#
        );
        assert_eq!(
            statement(&t, &correction("soft_delete")),
            statement(&t, &correction("update"))
        );
        assert_eq!(
            statement(&t, &correction("delete")),
            r#"DELETE FROM "shop"."orders" AS t USING json_populate_record(NULL::"shop"."orders", $1::text::json) AS r, json_populate_record(NULL::"shop"."orders", $2::text::json) AS e WHERE t."id" = r."id" AND t."tenant" = r."tenant" AND t."name" IS NOT DISTINCT FROM e."name" AND t."deleted" IS NOT DISTINCT FROM e."deleted""#
        );
        let soft = t.soft.clone().unwrap();
        assert_eq!(
            revive(&t, &correction("insert"), &soft),
            r#"UPDATE "shop"."orders" AS t SET "name" = r."name", "deleted" = r."deleted" FROM json_populate_record(NULL::"shop"."orders", $1::text::json) AS r WHERE t."id" = r."id" AND t."tenant" = r."tenant" AND t."deleted" = true"#
        );
        let versioned = Target {
            version: Some("name".into()),
            soft: Some(SoftTarget {
                column: "deleted".into(),
                deleted_value: None,
            }),
            ..target()
        };
        assert_eq!(
            statement(&versioned, &correction("delete")),
            r#"DELETE FROM "shop"."orders" AS t USING json_populate_record(NULL::"shop"."orders", $1::text::json) AS r, json_populate_record(NULL::"shop"."orders", $2::text::json) AS e WHERE t."id" = r."id" AND t."tenant" = r."tenant" AND t."name" IS NOT DISTINCT FROM e."name""#
        );
        assert_eq!(
            revive(
                &versioned,
                &correction("insert"),
                versioned.soft.as_ref().unwrap()
            ),
            r#"UPDATE "shop"."orders" AS t SET "name" = r."name", "deleted" = r."deleted" FROM json_populate_record(NULL::"shop"."orders", $1::text::json) AS r WHERE t."id" = r."id" AND t."tenant" = r."tenant" AND t."deleted" IS NOT NULL"#
        );
        let ledger = |template| render(template, &[("ledger", LEDGER_TABLE)]);
        assert_eq!(
            render(COLUMNS, &[]),
            "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped"
        );
        assert_eq!(
            ledger(CREATE_LEDGER),
            "CREATE TABLE IF NOT EXISTS recon_applied (correction_id text PRIMARY KEY, job text NOT NULL, run_id text NOT NULL, entity text NOT NULL, op text NOT NULL, outcome text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        );
        assert_eq!(
            ledger(LEDGER_SEEN),
            "SELECT correction_id FROM recon_applied WHERE correction_id = ANY($1)"
        );
        assert_eq!(
            ledger(LEDGER_RECORD),
            "INSERT INTO recon_applied (correction_id, job, run_id, entity, op, outcome) VALUES ($1, $2, $3, $4, $5, $6)"
        );
        // What tokio_postgres's own savepoint sends.
        assert_eq!(render(SAVEPOINT, &[]), "SAVEPOINT recon_correction");
        assert_eq!(render(RELEASE_SAVEPOINT, &[]), "RELEASE recon_correction");
        assert_eq!(
            render(ROLLBACK_TO_SAVEPOINT, &[]),
            "ROLLBACK TO recon_correction"
        );
        assert_eq!(
            check_insert(&t),
            r#"SELECT count(*) FROM json_populate_record(NULL::"shop"."orders", $1::text::json) AS r WHERE NOT EXISTS (SELECT 1 FROM "shop"."orders" AS t WHERE t."id" = r."id" AND t."tenant" = r."tenant")"#
        );
        assert_eq!(
            check_revive(&t, t.soft.as_ref().unwrap()),
            r#"SELECT count(*) FROM "shop"."orders" AS t, json_populate_record(NULL::"shop"."orders", $1::text::json) AS r WHERE t."id" = r."id" AND t."tenant" = r."tenant" AND t."deleted" = true"#
        );
        assert_eq!(
            check_guarded(&t, &correction("update")),
            r#"SELECT count(*) FROM "shop"."orders" AS t, json_populate_record(NULL::"shop"."orders", $1::text::json) AS r, json_populate_record(NULL::"shop"."orders", $2::text::json) AS e WHERE t."id" = r."id" AND t."tenant" = r."tenant" AND t."name" IS NOT DISTINCT FROM e."name" AND t."deleted" IS NOT DISTINCT FROM e."deleted""#
        );
        assert_eq!(
            statement_text(&t, &correction("insert")),
            format!(
                r#"{};  -- $1 = {{"deleted":false,"id":1,"name":"x","tenant":"a"}}"#,
                statement(&t, &correction("insert"))
            )
        );
        assert_eq!(
            statement_text(&t, &correction("update")),
            format!(
                r#"{};  -- $1 = {{"deleted":false,"id":1,"name":"x","tenant":"a"}}, $2 = {{"deleted":false,"id":1,"name":"x","tenant":"a"}}"#,
                statement(&t, &correction("update"))
            )
        );
    }
}
