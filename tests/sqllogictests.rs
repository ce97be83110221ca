//! Runs `tests/slt/*.slt` against a SessionContext set up exactly as `recon run` sets it up.
//!
//! Besides plain SQL, a statement `RECON PLAN <name>` followed by an entity's TOML (as in
//! a job file, without `name`) plans that entity over tables `<name>_source` and
//! `<name>_replica`, registers its functions, and creates the views `<name>_keys` (the
//! key summary), `<name>_diff` (over the summary), `<name>_key_pairs` (the pairs of the
//! key join, exact when no key on both sides is repeated), `<name>_pairs_summary` (the
//! key summary from them), `<name>_pairs_diff` (the diff over that summary, the
//! replica read from the pairs), `<name>_null_keys_source|replica` and
//! `<name>_duplicate_keys_source|replica` from the production templates in `queries/`.
//! Production collects the key summary into a table instead of a view; the SQL is the
//! same.
//!
//! It also plans the key merge as production does ([`recon::diff::key_merge`]: each
//! side's queries/key_side.sql as one partition, under
//! [`recon::diff::merge::MergePairsExec`]), registers its pairs as the table
//! `<name>_merge_pairs` ([`MergedPairs`]) and creates the views
//! `<name>_key_side_source|replica` (each side's input to the merge) and
//! `<name>_merge_diff` (queries/pairs_diff.sql over the pairs, as production runs it
//! after a merge). The merge runs whenever a query reads its pairs, and fails then
//! unless both tables are in strictly ascending key order. Such a query must be planned
//! with one partition, as production plans it (`SET
//! datafusion.execution.target_partitions = 1`): with more, the optimizer repartitions
//! the merge's inputs, and the merge refuses them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use recon::diff::merge::MergedPairs;
use recon::diff::plan::{EntityPlan, Side};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SltError(String);

struct ReconDb {
    ctx: SessionContext,
}

impl ReconDb {
    async fn plan(&mut self, text: &str) -> Result<(), SltError> {
        let (name, body) = text.split_once('\n').unwrap_or((text, ""));
        let name = name.trim();
        let entity = recon::job::parse_entity(&format!("name = \"{name}\"\n{body}"))
            .map_err(|e| SltError(e.to_string()))?;
        let ctx = self.ctx.clone();
        let schema = |table: String| {
            let ctx = ctx.clone();
            async move {
                ctx.table_provider(&table)
                    .await
                    .map(|t| t.schema())
                    .map_err(|e| SltError(e.to_string()))
            }
        };
        let source = schema(format!("{name}_source")).await?;
        let replica = schema(format!("{name}_replica")).await?;
        let plan = EntityPlan::try_new(&entity, &source, &replica, Path::new("<slt>"))
            .map_err(|e| SltError(e.to_string()))?;
        for udf in plan.functions() {
            self.ctx.register_udf(udf);
        }
        let (s, r) = (format!("{name}_source"), format!("{name}_replica"));
        let keys = format!("{name}_keys");
        let pairs = format!("{name}_key_pairs");
        // The key merge, planned now and run by each query that reads its pairs.
        let merge_pairs = format!("{name}_merge_pairs");
        let merge = recon::diff::key_merge(&self.ctx, &plan, &s, &r, false)
            .await
            .map_err(|e| SltError(format!("{merge_pairs}: {e}")))?;
        self.ctx
            .deregister_table(&merge_pairs)
            .and_then(|_| {
                self.ctx
                    .register_table(&merge_pairs, Arc::new(MergedPairs::new(merge)))
            })
            .map_err(|e| SltError(format!("{merge_pairs}: {e}")))?;
        let views = [
            (keys.clone(), plan.keys_sql(&s, &r)),
            (format!("{name}_key_pairs"), plan.key_pairs_sql(&s, &r)),
            (
                format!("{name}_pairs_summary"),
                plan.key_pairs_summary_sql(&pairs),
            ),
            (format!("{name}_diff"), plan.diff_sql(&keys, &s, &r, None)),
            (
                format!("{name}_pairs_diff"),
                plan.diff_sql(&format!("{name}_pairs_summary"), &s, &r, Some(&pairs)),
            ),
            (
                format!("{name}_null_keys_source"),
                plan.null_keys_sql(Side::Source, &s),
            ),
            (
                format!("{name}_null_keys_replica"),
                plan.null_keys_sql(Side::Replica, &r),
            ),
            (
                format!("{name}_duplicate_keys_source"),
                plan.duplicate_keys_sql(Side::Source, &keys),
            ),
            (
                format!("{name}_duplicate_keys_replica"),
                plan.duplicate_keys_sql(Side::Replica, &keys),
            ),
            (
                format!("{name}_key_side_source"),
                plan.key_side_sql(Side::Source, &s, false),
            ),
            (
                format!("{name}_key_side_replica"),
                plan.key_side_sql(Side::Replica, &r, false),
            ),
            (
                format!("{name}_merge_diff"),
                plan.pairs_diff_sql(&merge_pairs),
            ),
        ];
        for (view, sql) in views {
            self.ctx
                .sql(&format!("CREATE OR REPLACE VIEW \"{view}\" AS {sql}"))
                .await
                .map_err(|e| SltError(format!("{view}: {e}")))?;
        }
        Ok(())
    }
}

#[async_trait]
impl AsyncDB for ReconDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        if let Some(rest) = sql.trim_start().strip_prefix("RECON PLAN") {
            self.plan(rest.trim_start()).await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        let df = self
            .ctx
            .sql(sql)
            .await
            .map_err(|e| SltError(e.to_string()))?;
        let batches = df.collect().await.map_err(|e| SltError(e.to_string()))?;
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        let mut width = 0;
        for batch in &batches {
            width = batch.num_columns();
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SltError(e.to_string()))?;
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .map(|f| {
                            let v = f.value(row).to_string();
                            if v.is_empty() {
                                "(empty)".to_string()
                            } else {
                                v
                            }
                        })
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; width],
            rows,
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "recon"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn any_types(_: &Vec<DefaultColumnType>, _: &Vec<DefaultColumnType>) -> bool {
    true
}

#[tokio::main]
async fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/slt exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let mut runner = sqllogictest::Runner::new(|| async {
            Ok(ReconDb {
                ctx: recon::diff::session_context(&recon::diff::SessionOptions::default())
                    .expect("session"),
            })
        });
        runner.with_column_validator(any_types);
        match runner.run_file_async(&file).await {
            Ok(()) => {
                println!("ok      {name}");
                passed += 1;
            }
            Err(e) => {
                println!("FAILED  {name}\n{e}");
                failed += 1;
            }
        }
    }
    println!("sqllogictests: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        std::process::exit(1);
    }
}
