//! The apply loop, written once for every database: phases in the manifest's order,
//! batches of one transaction each, one savepoint per correction, the ledger. What
//! differs between databases is behind [`Dialect`] and [`Transaction`].

use tracing::info;

use super::{ApplyOptions, ApplySummary, Correction, Ctx, LogEntry, Outcome, Seen, Target};
use crate::error::{Error, Result};
use crate::write::vocabulary::Op;

/// A database apply writes to, with its connection. An implementation owns its SQL
/// (the templates under `queries/apply/<dialect>/`), quoting and placeholders, and how
/// it checks a guard without writing.
pub(crate) trait Dialect {
    /// A transaction open on the connection: one batch.
    type Tx<'a>: Transaction
    where
        Self: 'a;

    /// The columns of `table`; none when it does not exist (or this user cannot see it).
    async fn columns(&mut self, table: &str) -> Result<Vec<String>>;

    /// Creates the ledger table unless it exists.
    async fn ensure_ledger(&mut self) -> Result<()>;

    /// Starts the transaction of one batch.
    async fn begin(&mut self) -> Result<Self::Tx<'_>>;

    /// Dry run: whether the correction's guard matches now. Nothing is written.
    async fn matches(&mut self, target: &Target, c: &Correction) -> Result<bool>;

    /// The correction's statement with its values shown, for `--dry-run`.
    fn statement_text(target: &Target, c: &Correction) -> String;
}

/// One batch's transaction: the ledger's rows for the batch, one savepoint per
/// correction, the correction's statements and how the database counts what they touched.
pub(crate) trait Transaction {
    /// The driver's error, from the statements a correction runs.
    type DbError;

    /// Which of `ids` the ledger already holds.
    async fn seen(&mut self, ids: &[&str]) -> Result<Seen>;

    async fn savepoint(&mut self) -> Result<()>;

    async fn release_savepoint(&mut self) -> Result<()>;

    async fn rollback_to_savepoint(&mut self) -> Result<()>;

    /// Applies one correction under its guard: the rows it touched, 0 when the guard did
    /// not match (the row changed since the snapshot).
    async fn apply(&mut self, target: &Target, c: &Correction) -> Result<u64, Self::DbError>;

    /// Records the correction's outcome in the ledger.
    async fn record(
        &mut self,
        ctx: &Ctx<'_>,
        target: &Target,
        c: &Correction,
        outcome: &Outcome,
    ) -> Result<(), Self::DbError>;

    /// The database's message when it refused this one correction (the correction is
    /// recorded as failed and the batch goes on); `None` when the connection failed.
    fn refusal(e: &Self::DbError) -> Option<String>;

    /// The error that stops the apply, `what` naming the step.
    fn fail(&self, what: &str, e: Self::DbError) -> Error;

    async fn commit(self) -> Result<()>;
}

/// Inserts and updates parents first, then deletes and soft deletes children first.
const PHASES: [(&[Op], bool); 2] = [
    (&[Op::Insert, Op::Update], false),
    (&[Op::Delete, Op::SoftDelete], true),
];

/// Applies (or with `dry_run` checks) every target's corrections in batches, counting
/// outcomes into `summary`; returns each correction's outcome for the report.
pub(crate) async fn apply_targets<D: Dialect>(
    db: &mut D,
    ctx: &Ctx<'_>,
    opts: &ApplyOptions,
    targets: &[Target],
    summary: &mut ApplySummary,
) -> Result<Vec<LogEntry>> {
    let mut log = Vec::new();
    for (ops, reverse) in PHASES {
        let mut order: Vec<&Target> = targets.iter().collect();
        if reverse {
            order.reverse();
        }
        for target in order {
            for &op in ops {
                let cs: Vec<&Correction> =
                    target.corrections.iter().filter(|c| c.op == op).collect();
                if cs.is_empty() {
                    continue;
                }
                for batch in cs.chunks(opts.batch_rows.max(1)) {
                    let outcomes = if opts.dry_run {
                        check_batch(db, target, batch).await?
                    } else {
                        // A batch is one transaction: committed only while the lock
                        // is still this apply's.
                        if let Some(lock) = &opts.lock {
                            lock.check().await?;
                        }
                        apply_batch(db, ctx, target, batch).await?
                    };
                    for (c, o) in batch.iter().zip(outcomes) {
                        *summary
                            .counts
                            .entry(target.entity.clone())
                            .or_default()
                            .entry(op.to_string())
                            .or_default()
                            .entry(o.as_str().to_string())
                            .or_default() += 1;
                        log.push(LogEntry {
                            entity: target.entity.clone(),
                            correction_id: c.id.clone(),
                            op,
                            outcome: o,
                        });
                    }
                }
                if opts.dry_run {
                    let n = cs.len();
                    let matching = summary.counts[&target.entity][op.as_str()]
                        .get(Outcome::WouldApply.as_str())
                        .copied()
                        .unwrap_or(0) as usize;
                    let sql = D::statement_text(target, cs[0]);
                    summary.statements.push(format!(
                        "-- {}: {n} {op} correction(s), {matching} row(s) would be touched, {} stale\n{sql}",
                        target.entity,
                        n - matching
                    ));
                }
                info!(entity = %target.entity, op = op.as_str(), corrections = cs.len(), "applied");
            }
        }
    }
    Ok(log)
}

/// One batch in one transaction: a correction already in the ledger is skipped, each
/// other one runs under a savepoint and is recorded with its outcome; a correction the
/// database refuses is rolled back to its savepoint and recorded as failed.
async fn apply_batch<D: Dialect>(
    db: &mut D,
    ctx: &Ctx<'_>,
    target: &Target,
    batch: &[&Correction],
) -> Result<Vec<Outcome>> {
    let tx = db.begin().await?;
    in_transaction(tx, ctx, target, batch).await
}

async fn in_transaction<T: Transaction>(
    mut tx: T,
    ctx: &Ctx<'_>,
    target: &Target,
    batch: &[&Correction],
) -> Result<Vec<Outcome>> {
    let ids: Vec<&str> = batch.iter().map(|c| c.id.as_str()).collect();
    let seen = tx.seen(&ids).await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for c in batch {
        if seen.contains(&c.id) {
            outcomes.push(Outcome::AlreadyApplied);
            continue;
        }
        tx.savepoint().await?;
        match apply_one(&mut tx, ctx, target, c).await {
            Ok(o) => {
                tx.release_savepoint().await?;
                outcomes.push(o);
            }
            Err(e) => match T::refusal(&e) {
                Some(message) => {
                    tx.rollback_to_savepoint().await?;
                    outcomes.push(Outcome::Failed(message));
                }
                None => return Err(tx.fail("applying a correction", e)),
            },
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// One correction and its ledger row, inside its savepoint.
async fn apply_one<T: Transaction>(
    tx: &mut T,
    ctx: &Ctx<'_>,
    target: &Target,
    c: &Correction,
) -> Result<Outcome, T::DbError> {
    let outcome = if tx.apply(target, c).await? > 0 {
        Outcome::Applied
    } else {
        Outcome::Stale
    };
    tx.record(ctx, target, c, &outcome).await?;
    Ok(outcome)
}

/// Dry run of one batch: whether each correction's guard matches now.
async fn check_batch<D: Dialect>(
    db: &mut D,
    target: &Target,
    batch: &[&Correction],
) -> Result<Vec<Outcome>> {
    let mut out = Vec::with_capacity(batch.len());
    for c in batch {
        out.push(if db.matches(target, c).await? {
            Outcome::WouldApply
        } else {
            Outcome::Stale
        });
    }
    Ok(out)
}
