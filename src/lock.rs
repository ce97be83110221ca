//! One run at a time per job and run date: a lock object created with a conditional put
//! (`PutMode::Create`), holding its holder and expiry.
//!
//! - **Takeover is a compare-and-swap.** An expired lock, or one whose holder is provably
//!   dead, is replaced only if it is still the object that was read: a conditional put on
//!   its ETag on S3 and in memory; on local files, which have no conditional put, a
//!   compare of its bytes and an atomic rename over it, both under an advisory lock on a
//!   side file (`….lock.guard`), so two racing runs never both hold it.
//! - **A holder keeps its lock alive.** [`RunLock::keep`] renews it (the same
//!   compare-and-swap) every third of its time to live, so the default lifetime is
//!   short and a crashed run blocks its reruns for minutes, not hours.
//! - **A provably dead holder is replaced at once**: same host, same boot (the kernel's
//!   boot id, so a reboot's reused pid is not mistaken), and its process gone or a
//!   different process with its pid.
//! - **A run whose lock was taken over never commits.** [`HeldLock::check`], called
//!   right before a commit, reads the lock back and fails with exit 6 unless it is
//!   still the one this run last wrote.
//!
//! Some S3-compatible servers ignore conditional writes; [`probe`] detects that, and the
//! run refuses to pretend it holds a lock unless the user opts out with `--no-lock`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::store::Location;

/// Default lock lifetime. The holder renews it every third of this, so it only has
/// to outlast a stalled renewal; a crashed run's lock expires after it.
pub const DEFAULT_TTL_SECS: u64 = 300;

/// What the lock object holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockInfo {
    pub job: String,
    pub run_date: NaiveDate,
    pub run_id: String,
    /// `host:pid` of the holder.
    pub owner: String,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The holder's process, to tell whether it is still alive (absent from locks
    /// written by older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
}

/// A process, told apart from a later one with the same pid on the same host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Process {
    pub host: String,
    /// The kernel's boot id: a pid means nothing across a reboot.
    pub boot_id: String,
    pub pid: u32,
    /// When the process started, in clock ticks since boot (`/proc/PID/stat`).
    pub started: u64,
}

impl Process {
    /// This process, where the system says enough to tell it apart (Linux).
    pub fn current() -> Option<Process> {
        let pid = std::process::id();
        Some(Process {
            host: host(),
            boot_id: boot_id()?,
            pid,
            started: process_start(pid)?,
        })
    }

    /// Whether this process, seen from the current one, has certainly ended: it ran on
    /// this host since its last boot, and its pid is free or taken by a later process.
    pub fn is_gone(&self) -> bool {
        let Some(me) = Process::current() else {
            return false;
        };
        me.host == self.host
            && me.boot_id == self.boot_id
            && process_start(self.pid) != Some(self.started)
    }
}

fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Field 22 of `/proc/PID/stat`: the process's start time in ticks since boot.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn owner() -> String {
    format!("{}:{}", host(), std::process::id())
}

/// Where the lock of a job's run date lives, under the job's output prefix.
pub fn lock_path(run_date: NaiveDate) -> String {
    format!("locks/run_date={run_date}.lock")
}

fn serialise(info: &LockInfo) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(info).map_err(|e| Error::bug("serialising lock", e))
}

/// Checks that the store honours `PutMode::Create`: a second create of the same object
/// must fail. Servers that ignore `If-None-Match` (Garage does) fail this probe.
pub async fn probe(output: &Location) -> Result<bool> {
    let path = output
        .child(&format!("locks/_probe-{}", uuid::Uuid::new_v4().simple()))
        .prefix;
    let create = PutOptions::from(PutMode::Create);
    let first = output
        .store
        .put_opts(&path, PutPayload::from_static(b"1"), create.clone())
        .await;
    let honoured = match first {
        Ok(_) => match output
            .store
            .put_opts(&path, PutPayload::from_static(b"2"), create)
            .await
        {
            Err(object_store::Error::AlreadyExists { .. }) => true,
            Ok(_) => false,
            Err(object_store::Error::NotImplemented { .. }) => false,
            Err(e) => return Err(e.into()),
        },
        Err(object_store::Error::NotImplemented { .. }) => false,
        Err(e) => return Err(e.into()),
    };
    if let Err(e) = output.store.delete(&path).await {
        warn!(error = %e, "could not remove the conditional-write probe object");
    }
    remove_old_probes(output).await;
    Ok(honoured)
}

/// Removes probe objects a killed run left behind (older than an hour, so that a
/// probe under way is never touched).
async fn remove_old_probes(output: &Location) {
    let prefix = output.child("locks").prefix;
    let Ok(listing) = output.store.list_with_delimiter(Some(&prefix)).await else {
        return;
    };
    let old = Utc::now() - Duration::hours(1);
    for meta in listing.objects {
        let stale = meta
            .location
            .filename()
            .is_some_and(|n| n.starts_with("_probe-"))
            && meta.last_modified < old;
        if stale && output.store.delete(&meta.location).await.is_ok() {
            info!(object = %meta.location, "removed a probe object a stopped run left behind");
        }
    }
}

/// The lock object as last read or written: its bytes and version.
#[derive(Debug, Clone)]
struct Seen {
    bytes: Vec<u8>,
    version: UpdateVersion,
}

/// How a compare-and-swap of the lock object ended.
enum Swapped {
    /// Replaced; the new object's version.
    Done(UpdateVersion),
    /// The object was no longer the one expected.
    Lost,
}

/// Replaces the lock object at `location` with `new` (or removes it, with `None`) if
/// it is still `seen`.
async fn swap(location: &Location, seen: &Seen, new: Option<Vec<u8>>) -> Result<Swapped> {
    if let Some(path) = location.local_path() {
        let expected = seen.bytes.clone();
        let done = tokio::task::spawn_blocking(move || local_swap(&path, &expected, new))
            .await
            .map_err(|e| Error::bug("lock swap", e))?
            .map_err(|e| Error::Storage {
                location: location.url(),
                source: object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                },
            })?;
        return Ok(if done {
            Swapped::Done(UpdateVersion {
                e_tag: None,
                version: None,
            })
        } else {
            Swapped::Lost
        });
    }
    let store = &location.store;
    let path = &location.prefix;
    match new {
        Some(bytes) => match store
            .put_opts(
                path,
                PutPayload::from(bytes),
                PutMode::Update(seen.version.clone()).into(),
            )
            .await
        {
            Ok(put) => Ok(Swapped::Done(UpdateVersion {
                e_tag: put.e_tag,
                version: put.version,
            })),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Ok(Swapped::Lost),
            Err(e) => Err(e.into()),
        },
        // No conditional delete in object_store: read, compare, delete. Only a run
        // that took the lock over in between would lose it, and only an expired lock
        // is taken over, which a holder renewing it never has.
        None => {
            let current = match store.get(path).await {
                Ok(r) => r.bytes().await?,
                Err(object_store::Error::NotFound { .. }) => return Ok(Swapped::Lost),
                Err(e) => return Err(e.into()),
            };
            if current.as_ref() != seen.bytes.as_slice() {
                return Ok(Swapped::Lost);
            }
            store.delete(path).await?;
            Ok(Swapped::Done(seen.version.clone()))
        }
    }
}

/// The compare-and-swap on a local file, under an advisory lock on `….guard` that
/// every swap of this lock takes: the file still holding `expected` is replaced by
/// `new` through an atomic rename (or removed). A run creating the lock afresh does not
/// need the guard: the lock file exists throughout a swap, so its exclusive create
/// fails.
fn local_swap(
    path: &std::path::Path,
    expected: &[u8],
    new: Option<Vec<u8>>,
) -> std::io::Result<bool> {
    let mut guard_name = path.as_os_str().to_owned();
    guard_name.push(".guard");
    let guard = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&guard_name)?;
    guard.lock()?;
    let current = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if current != expected {
        return Ok(false);
    }
    match new {
        Some(bytes) => {
            let mut staging = path.as_os_str().to_owned();
            staging.push(format!(".{}", uuid::Uuid::new_v4().simple()));
            std::fs::write(&staging, bytes)?;
            if let Err(e) = std::fs::rename(&staging, path) {
                let _ = std::fs::remove_file(&staging);
                return Err(e);
            }
        }
        None => std::fs::remove_file(path)?,
    }
    Ok(true)
}

/// A taken lock; keep it alive with [`RunLock::keep`] or release it with
/// [`RunLock::release`].
#[derive(Debug, Clone)]
pub struct RunLock {
    location: Location,
    info: LockInfo,
    seen: Seen,
    ttl: std::time::Duration,
}

impl RunLock {
    /// Takes the lock of `run_date` under `output`, or says who holds it.
    pub async fn acquire(
        output: &Location,
        job: &str,
        run_date: NaiveDate,
        run_id: &str,
        ttl: std::time::Duration,
    ) -> Result<Self> {
        let location = output.child(&lock_path(run_date));
        let now = Utc::now();
        let info = LockInfo {
            job: job.to_string(),
            run_date,
            run_id: run_id.to_string(),
            owner: owner(),
            acquired_at: now,
            expires_at: now + Duration::from_std(ttl).unwrap_or(Duration::minutes(5)),
            process: Process::current(),
        };
        let bytes = serialise(&info)?;
        let store = &location.store;
        let path = &location.prefix;
        let locked = |holder: String| Error::Locked {
            lock: location.url(),
            holder,
        };
        // Twice at most: a lock released between our create and our read is created
        // again once.
        for _ in 0..2 {
            match store
                .put_opts(
                    path,
                    PutPayload::from(bytes.clone()),
                    PutMode::Create.into(),
                )
                .await
            {
                Ok(put) => {
                    info!(lock = %location.url(), "lock taken");
                    let seen = Seen {
                        bytes,
                        version: UpdateVersion {
                            e_tag: put.e_tag,
                            version: put.version,
                        },
                    };
                    return Ok(RunLock {
                        location,
                        info,
                        seen,
                        ttl,
                    });
                }
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            // Someone holds it, or held it and died: look at the holder and its expiry.
            let current = match store.get(path).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let version = UpdateVersion {
                e_tag: current.meta.e_tag.clone(),
                version: current.meta.version.clone(),
            };
            let current_bytes = current.bytes().await?.to_vec();
            let held: Option<LockInfo> = serde_json::from_slice(&current_bytes).ok();
            let dead = held
                .as_ref()
                .and_then(|h| h.process.as_ref())
                .is_some_and(Process::is_gone);
            if let Some(held) = &held
                && held.expires_at > now
                && !dead
            {
                return Err(locked(format!(
                    "run {} of job {} by {} until {}",
                    held.run_id, held.job, held.owner, held.expires_at
                )));
            }
            // Expired, unreadable or its holder gone: take it over, but only if it is
            // still the lock we read.
            warn!(
                lock = %location.url(),
                previous = ?held.as_ref().map(|h| &h.run_id),
                reason = if dead { "holder is gone" } else { "expired" },
                "taking over the lock"
            );
            let seen = Seen {
                bytes: current_bytes,
                version,
            };
            return match swap(&location, &seen, Some(bytes.clone())).await? {
                Swapped::Done(version) => Ok(RunLock {
                    location,
                    info,
                    seen: Seen { bytes, version },
                    ttl,
                }),
                Swapped::Lost => Err(locked("another run that took the lock over first".into())),
            };
        }
        Err(locked("another run".into()))
    }

    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Keeps the lock alive while the run works: renews it every third of its time to
    /// live, and notes when a renewal finds it taken over or cannot be made before it
    /// expires. [`HeldLock::check`] then fails.
    pub fn keep(self) -> HeldLock {
        let state = Arc::new(Kept {
            lock: tokio::sync::Mutex::new(self),
            lost: AtomicBool::new(false),
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let renewing = tokio::spawn(renew(Arc::clone(&state), stopped));
        HeldLock {
            state,
            stop,
            renewing: Mutex::new(Some(renewing)),
        }
    }

    /// Writes a new expiry, if the lock is still ours.
    async fn renew(&mut self) -> Result<bool> {
        let mut info = self.info.clone();
        info.expires_at = Utc::now() + Duration::from_std(self.ttl).unwrap_or(Duration::minutes(5));
        let bytes = serialise(&info)?;
        match swap(&self.location, &self.seen, Some(bytes.clone())).await? {
            Swapped::Done(version) => {
                self.info = info;
                self.seen = Seen { bytes, version };
                Ok(true)
            }
            Swapped::Lost => Ok(false),
        }
    }

    /// Whether the store's lock object is still the one this run last wrote.
    async fn is_ours(&self) -> Result<bool> {
        match self.location.store.get(&self.location.prefix).await {
            Ok(r) => Ok(r.bytes().await?.as_ref() == self.seen.bytes.as_slice()),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the lock if it is still ours.
    pub async fn release(self) {
        match swap(&self.location, &self.seen, None).await {
            Ok(Swapped::Done(_)) => {}
            Ok(Swapped::Lost) => {
                warn!(lock = %self.location.url(), "lock was taken over; leaving it in place")
            }
            Err(e) => {
                warn!(lock = %self.location.url(), error = %e, "could not release the lock; it expires by itself")
            }
        }
    }

    fn lost(&self) -> Error {
        Error::Locked {
            lock: self.location.url(),
            holder: format!(
                "this run ({}) lost its lock before committing (taken over, or not renewed in time); it commits nothing",
                self.info.run_id
            ),
        }
    }
}

/// What a kept lock's renewing task and its run share. The lock's state is behind an
/// async mutex held across each swap, so a check never sees a renewal half done.
#[derive(Debug)]
struct Kept {
    lock: tokio::sync::Mutex<RunLock>,
    lost: AtomicBool,
}

/// Renews the lock until it is lost or `stopped` says the run is done.
async fn renew(state: Arc<Kept>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let ttl = state.lock.lock().await.ttl;
    let every = (ttl / 3).max(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
        let mut lock = state.lock.lock().await;
        match lock.renew().await {
            Ok(true) => {}
            Ok(false) => {
                warn!(lock = %lock.location.url(), "the lock was taken over; this run will not commit");
                state.lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                // A store hiccup: try again at the next beat, unless the lock would
                // expire before it.
                let next = Utc::now() + Duration::from_std(every).unwrap_or_default();
                if next >= lock.info.expires_at {
                    warn!(lock = %lock.location.url(), error = %e, "could not renew the lock before it expires; this run will not commit");
                    state.lost.store(true, Ordering::SeqCst);
                    return;
                }
                warn!(lock = %lock.location.url(), error = %e, "could not renew the lock; trying again");
            }
        }
    }
}

/// A lock kept alive by a renewing task ([`RunLock::keep`]).
#[derive(Debug)]
pub struct HeldLock {
    state: Arc<Kept>,
    stop: tokio::sync::watch::Sender<bool>,
    renewing: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl HeldLock {
    /// Fails with exit 6 unless the lock is still this run's: called right before a
    /// commit, so a run whose lock was taken over commits nothing.
    pub async fn check(&self) -> Result<()> {
        let lock = self.state.lock.lock().await;
        if self.state.lost.load(Ordering::SeqCst) || !lock.is_ours().await? {
            return Err(lock.lost());
        }
        Ok(())
    }

    /// Stops renewing and removes the lock if it is still ours (once; later calls do
    /// nothing).
    pub async fn release(&self) {
        let _ = self.stop.send(true);
        let renewing = self.renewing.lock().expect("renewing task").take();
        let Some(renewing) = renewing else {
            return;
        };
        let _ = renewing.await;
        let lock = self.state.lock.lock().await.clone();
        lock.release().await;
    }

    pub async fn info(&self) -> LockInfo {
        self.state.lock.lock().await.info.clone()
    }
}
