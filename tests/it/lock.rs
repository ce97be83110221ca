//! One run at a time per job and run date, on local files and in memory.

use std::sync::Arc;
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
        process: None,
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

/// `contenders` runs race for the lock, `rounds` times, half the rounds over a fresh
/// lock and half over an expired one. Each holder marks its tenure with an exclusive
/// create of a marker object and removes it before it releases: a create that finds
/// the marker means two tenures overlapped. Over an expired lock, exactly one
/// contender takes it over (the others find a live lock); each holder keeps the lock
/// until every contender has tried.
pub async fn race_for_the_lock(output: &Location, rounds: usize, contenders: usize) {
    let output = output.clone();
    let marker = output.child("locks/_tenure").prefix;
    let lock = output.child(&lock_path(date())).prefix;
    for round in 0..rounds {
        let expired = round % 2 == 1;
        if expired {
            let stale = LockInfo {
                job: "job".into(),
                run_date: date(),
                run_id: format!("crashed-{round}"),
                owner: "elsewhere:1".into(),
                acquired_at: Utc::now() - chrono::Duration::hours(8),
                expires_at: Utc::now() - chrono::Duration::hours(2),
                process: None,
            };
            let bytes = serde_json::to_vec(&stale).unwrap();
            output
                .store
                .put(&lock, PutPayload::from(bytes))
                .await
                .unwrap();
        }
        // Every contender waits here after its attempt, and a holder releases only
        // after that: all attempts meet the lock held, so over an expired lock exactly
        // one takes it (a late contender could otherwise take a lock already released).
        let attempted = Arc::new(tokio::sync::Barrier::new(contenders));
        let tasks: Vec<_> = (0..contenders)
            .map(|i| {
                let output = output.clone();
                let marker = marker.clone();
                let attempted = Arc::clone(&attempted);
                tokio::spawn(async move {
                    let id = format!("r{round}-c{i}");
                    let held = match RunLock::acquire(&output, "job", date(), &id, TTL).await {
                        Ok(held) => held,
                        Err(e) => {
                            assert_eq!(e.exit_code(), ExitCode::Locked, "{e}");
                            attempted.wait().await;
                            return false;
                        }
                    };
                    let create = object_store::PutOptions::from(object_store::PutMode::Create);
                    let clash = output
                        .store
                        .put_opts(&marker, PutPayload::from(id.clone().into_bytes()), create)
                        .await
                        .err();
                    attempted.wait().await;
                    if let Some(e) = clash {
                        panic!("round {round}: {id} holds the lock while another does: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    output.store.delete(&marker).await.unwrap();
                    held.release().await;
                    true
                })
            })
            .collect();
        let mut holders = 0;
        for t in tasks {
            holders += usize::from(t.await.unwrap());
        }
        if expired {
            assert_eq!(
                holders, 1,
                "round {round}: exactly one takes over an expired lock"
            );
        } else {
            assert!(holders >= 1, "round {round}: someone gets a fresh lock");
        }
        assert!(
            output.store.head(&lock).await.is_err(),
            "round {round}: released"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_runs_never_hold_the_lock_together_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let url = recon::store::resolve_url(dir.path().to_str().unwrap(), dir.path()).unwrap();
    race_for_the_lock(&recon::store::open(&url).unwrap(), 20, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_runs_never_hold_the_lock_together_in_memory() {
    race_for_the_lock(
        &recon::store::open("memory://lock-it/race").unwrap(),
        20,
        20,
    )
    .await;
}

/// A lock whose holder is provably gone (this host, this boot, its process ended) is
/// taken over at once, long before it expires; a live holder's is not.
#[tokio::test]
async fn a_dead_holders_lock_is_taken_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = recon::store::resolve_url(dir.path().to_str().unwrap(), dir.path()).unwrap();
    let output = recon::store::open(&url).unwrap();
    let Some(me) = recon::lock::Process::current() else {
        panic!("this system must tell processes apart (Linux /proc)");
    };
    // A process that has ended: its pid is free, or reused by a later process.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let lock = output.child(&lock_path(date())).prefix;
    let holder = |process: recon::lock::Process| LockInfo {
        job: "job".into(),
        run_date: date(),
        run_id: "holder".into(),
        owner: format!("{}:{}", process.host, process.pid),
        acquired_at: Utc::now(),
        expires_at: Utc::now() + chrono::Duration::hours(1),
        process: Some(process),
    };
    let live = holder(me.clone());
    output
        .store
        .put(&lock, PutPayload::from(serde_json::to_vec(&live).unwrap()))
        .await
        .unwrap();
    let err = RunLock::acquire(&output, "job", date(), "second", TTL)
        .await
        .expect_err("a live holder keeps its lock");
    assert_eq!(err.exit_code(), ExitCode::Locked);
    let dead = holder(recon::lock::Process {
        pid: dead_pid,
        ..me.clone()
    });
    output
        .store
        .put(&lock, PutPayload::from(serde_json::to_vec(&dead).unwrap()))
        .await
        .unwrap();
    let taken = RunLock::acquire(&output, "job", date(), "third", TTL)
        .await
        .expect("a dead holder's lock is taken over");
    assert_eq!(taken.info().run_id, "third");
    taken.release().await;
    // Another boot's holder is not judged: its lock waits for its expiry.
    let other_boot = holder(recon::lock::Process {
        pid: dead_pid,
        boot_id: "another-boot".into(),
        ..me
    });
    output
        .store
        .put(
            &lock,
            PutPayload::from(serde_json::to_vec(&other_boot).unwrap()),
        )
        .await
        .unwrap();
    assert!(
        RunLock::acquire(&output, "job", date(), "fourth", TTL)
            .await
            .is_err()
    );
}

/// A kept lock is renewed, so it outlives its time to live; once taken from its
/// holder, the holder's check before committing fails with exit 6.
pub async fn a_kept_lock_is_renewed_and_a_lost_one_stops_the_commit(output: &Location) {
    let output = output.clone();
    let ttl = Duration::from_millis(900);
    let held = RunLock::acquire(&output, "job", date(), "keeper", ttl)
        .await
        .unwrap()
        .keep();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = RunLock::acquire(&output, "job", date(), "rival", ttl)
        .await
        .expect_err("a renewed lock is still held after three times its time to live");
    assert_eq!(err.exit_code(), ExitCode::Locked);
    held.check().await.expect("still ours");
    // Someone overwrites the lock (an operator, a run that judged it expired).
    let lock = output.child(&lock_path(date())).prefix;
    let mut rival = held.info().await;
    rival.run_id = "rival".into();
    output
        .store
        .put(&lock, PutPayload::from(serde_json::to_vec(&rival).unwrap()))
        .await
        .unwrap();
    let err = held
        .check()
        .await
        .expect_err("a lost lock stops the commit");
    assert_eq!(err.exit_code(), ExitCode::Locked);
    assert!(err.to_string().contains("commits nothing"), "{err}");
    held.release().await;
    let left = output
        .store
        .get(&lock)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let left: LockInfo = serde_json::from_slice(&left).unwrap();
    assert_eq!(
        left.run_id, "rival",
        "a lost lock is left to its new holder"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_lock_is_renewed_and_a_lost_one_stops_the_commit_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let url = recon::store::resolve_url(dir.path().to_str().unwrap(), dir.path()).unwrap();
    a_kept_lock_is_renewed_and_a_lost_one_stops_the_commit(&recon::store::open(&url).unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_lock_is_renewed_and_a_lost_one_stops_the_commit_in_memory() {
    a_kept_lock_is_renewed_and_a_lost_one_stops_the_commit(
        &recon::store::open("memory://lock-it/kept").unwrap(),
    )
    .await;
}

/// The lock contender example (examples/lock_contender.rs), built with the tests.
fn contender() -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap();
    let bin = deps
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/lock_contender");
    assert!(bin.exists(), "{} is built with the tests", bin.display());
    bin
}

/// Twenty processes race for the lock under `url`, twenty rounds, every other one over
/// an expired lock (planted by `plant`): no two tenures overlap (each contender marks
/// its tenure with an exclusive create and exits 1 if the mark is there). `configure`
/// sets a contender's environment; `held` says whether a lock object is left.
pub fn race_processes(
    url: &str,
    configure: &dyn Fn(&mut std::process::Command),
    plant: &dyn Fn(&LockInfo),
    held: &dyn Fn() -> bool,
) {
    let bin = contender();
    for round in 0..20 {
        if round % 2 == 1 {
            plant(&LockInfo {
                job: "job".into(),
                run_date: date(),
                run_id: format!("crashed-{round}"),
                owner: "elsewhere:1".into(),
                acquired_at: Utc::now() - chrono::Duration::hours(8),
                expires_at: Utc::now() - chrono::Duration::hours(2),
                process: None,
            });
        }
        // All go at once, whatever their start-up time.
        let start = (Utc::now().timestamp_millis() + 400).to_string();
        let children: Vec<_> = (0..20)
            .map(|i| {
                let mut cmd = std::process::Command::new(&bin);
                configure(&mut cmd);
                cmd.args([url, &format!("r{round}-p{i}"), &start])
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut holders = 0;
        for c in children {
            let out = c.wait_with_output().unwrap();
            match out.status.code() {
                Some(0) => holders += 1,
                Some(6) => {}
                other => panic!(
                    "round {round}: exit {other:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        }
        // One that comes after the holder released may take the lock afresh, so more
        // than one may hold it in turn; never at once.
        assert!(holders >= 1, "round {round}: someone gets the lock");
        assert!(!held(), "round {round}: released");
    }
}

#[test]
fn racing_processes_never_hold_the_lock_together_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let url = recon::store::resolve_url(dir.path().to_str().unwrap(), dir.path()).unwrap();
    let lock = dir.path().join(lock_path(date()));
    race_processes(
        &url,
        &|_| {},
        &|stale| {
            std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
            std::fs::write(&lock, serde_json::to_vec(stale).unwrap()).unwrap();
        },
        &|| lock.exists(),
    );
}
