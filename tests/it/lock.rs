//! One run at a time per job and run date, on local files and in memory.

use std::time::Duration;

use chrono::{NaiveDate, Utc};
use object_store::{ObjectStoreExt, PutPayload};
use recon::ExitCode;
use recon::job::JobConfig;
use recon::lock::{LockInfo, RunLock, lock_path, probe};
use recon::run::{LockMode, RunOptions, run};
use recon::store::Location;

use crate::common::*;

const TTL: Duration = Duration::from_secs(600);

fn date() -> NaiveDate {
    recon::generate::sample_run_date()
}

fn opts(run_id: &str) -> RunOptions {
    RunOptions {
        run_date: date(),
        run_id: Some(run_id.into()),
        entities: vec![],
        max_correction_share: None,
        target_partitions: 2,
        memory_limit: 1 << 30,
        lock: LockMode::default(),
        progress: false,
        export: false,
        key_plan: Default::default(),
    }
}

/// Two runs acquire at once: exactly one proceeds; after release the next one gets it.
pub async fn concurrent_acquire_lets_one_through(output: &Location) {
    let output = output.clone();
    assert!(
        probe(&output).await.unwrap(),
        "{output:?} honours conditional writes"
    );
    let (a, b) = tokio::join!(
        RunLock::acquire(&output, "job", date(), "a", TTL),
        RunLock::acquire(&output, "job", date(), "b", TTL),
    );
    let (held, refused) = match (a, b) {
        (Ok(l), Err(e)) | (Err(e), Ok(l)) => (l, e),
        (a, b) => panic!("exactly one must proceed: {a:?} / {b:?}"),
    };
    assert_eq!(refused.exit_code(), ExitCode::Locked);
    held.release().await;
    // Released: the next run gets it.
    RunLock::acquire(&output, "job", date(), "c", TTL)
        .await
        .unwrap()
        .release()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_at_once_exactly_one_proceeds_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let url = recon::store::resolve_url(dir.path().to_str().unwrap(), dir.path()).unwrap();
    concurrent_acquire_lets_one_through(&recon::store::open(&url).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_at_once_exactly_one_proceeds_in_memory() {
    concurrent_acquire_lets_one_through(&recon::store::open("memory://lock-it/out").unwrap()).await;
}

/// A lock past its expiry is taken over, and released afterwards.
pub async fn stale_lock_is_taken_over(output: &Location) {
    let output = output.clone();
    let stale = LockInfo {
        job: "job".into(),
        run_date: date(),
        run_id: "crashed".into(),
        owner: "elsewhere:1".into(),
        acquired_at: Utc::now() - chrono::Duration::hours(8),
        expires_at: Utc::now() - chrono::Duration::hours(2),
    };
    let path = output.child(&lock_path(date())).prefix;
    let bytes = serde_json::to_vec(&stale).unwrap();
    output
        .store
        .put(&path, PutPayload::from(bytes))
        .await
        .unwrap();
    let lock = RunLock::acquire(&output, "job", date(), "fresh", TTL)
        .await
        .unwrap();
    assert_eq!(lock.info().run_id, "fresh");
    lock.release().await;
    assert!(
        output.store.head(&path).await.is_err(),
        "released lock is gone"
    );
}

#[tokio::test]
async fn a_stale_lock_is_taken_over_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let url = recon::store::resolve_url(dir.path().to_str().unwrap(), dir.path()).unwrap();
    stale_lock_is_taken_over(&recon::store::open(&url).unwrap()).await;
}

#[tokio::test]
async fn a_stale_lock_is_taken_over_in_memory() {
    stale_lock_is_taken_over(&recon::store::open("memory://lock-it/stale").unwrap()).await;
}

#[tokio::test]
async fn a_held_lock_stops_the_run_and_nothing_is_written() {
    let fx = Fixture::new();
    let job = JobConfig::load(&fx.job()).unwrap();
    let output = recon::store::open(&job.output).unwrap();
    let held = RunLock::acquire(&output, &job.name, date(), "other", TTL)
        .await
        .unwrap();
    let err = run(&job, &opts("second"))
        .await
        .err()
        .expect("the second run must stop");
    assert_eq!(err.exit_code(), ExitCode::Locked);
    assert!(
        err.to_string().contains("run other of job identity"),
        "{err}"
    );
    assert!(manifests(&fx.out()).is_empty());
    assert!(
        !fx.out().join("discrepancies").exists(),
        "nothing written before the lock"
    );
    held.release().await;
    let outcome = run(&job, &opts("third")).await.unwrap();
    assert_eq!(outcome.exit, ExitCode::Success);
    assert!(
        !fx.out().join(lock_path(date())).exists(),
        "the run released its lock"
    );
}
