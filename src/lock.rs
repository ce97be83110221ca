//! One run at a time per job and run date: a lock object created with a conditional put
//! (`PutMode::Create`), holding its owner and expiry. An expired lock is taken over with
//! a compare-and-swap on its version where the store supports one.
//!
//! Some S3-compatible servers ignore conditional writes; [`probe`] detects that, and the
//! run refuses to pretend it holds a lock unless the user opts out with `--no-lock`.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::store::Location;

/// Default lock lifetime: longer than any sane run; a crashed run's lock expires after it.
pub const DEFAULT_TTL_SECS: u64 = 6 * 3600;

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
}

/// A held lock; release it with [`RunLock::release`].
#[derive(Debug)]
pub struct RunLock {
    location: Location,
    info: LockInfo,
}

/// Where the lock of a job's run date lives, under the job's output prefix.
pub fn lock_path(run_date: NaiveDate) -> String {
    format!("locks/run_date={run_date}.lock")
}

fn owner() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}

fn payload(info: &LockInfo) -> Result<PutPayload> {
    serde_json::to_vec_pretty(info)
        .map(PutPayload::from)
        .map_err(|e| Error::Internal(format!("serialising lock: {e}")))
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
    Ok(honoured)
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
            expires_at: now + Duration::from_std(ttl).unwrap_or(Duration::hours(6)),
        };
        let store = &location.store;
        let path: &Path = &location.prefix;
        match store
            .put_opts(path, payload(&info)?, PutMode::Create.into())
            .await
        {
            Ok(_) => {
                info!(lock = %location.url(), "lock taken");
                return Ok(RunLock { location, info });
            }
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        // Someone holds it, or held it and died: look at the holder and its expiry.
        let current = match store.get(path).await {
            Ok(r) => r,
            // Released between our create and this read: one retry of the create.
            Err(object_store::Error::NotFound { .. }) => {
                return match store
                    .put_opts(path, payload(&info)?, PutMode::Create.into())
                    .await
                {
                    Ok(_) => Ok(RunLock { location, info }),
                    Err(object_store::Error::AlreadyExists { .. }) => Err(Error::Locked {
                        lock: location.url(),
                        holder: "another run".into(),
                    }),
                    Err(e) => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        };
        let version = UpdateVersion {
            e_tag: current.meta.e_tag.clone(),
            version: current.meta.version.clone(),
        };
        let bytes = current.bytes().await?;
        let held: Option<LockInfo> = serde_json::from_slice(&bytes).ok();
        if let Some(held) = &held
            && held.expires_at > now
        {
            return Err(Error::Locked {
                lock: location.url(),
                holder: format!(
                    "run {} of job {} by {} until {}",
                    held.run_id, held.job, held.owner, held.expires_at
                ),
            });
        }
        // Expired (or unreadable): take it over, but only if nobody else did first.
        warn!(lock = %location.url(), previous = ?held.as_ref().map(|h| &h.run_id), "taking over an expired lock");
        match store
            .put_opts(path, payload(&info)?, PutMode::Update(version).into())
            .await
        {
            Ok(_) => Ok(RunLock { location, info }),
            Err(object_store::Error::Precondition { .. }) => Err(Error::Locked {
                lock: location.url(),
                holder: "another run that took over the expired lock first".into(),
            }),
            Err(object_store::Error::NotImplemented { .. }) => {
                // Local files have no compare-and-swap: delete, then create again; the
                // create still lets only one of two racing runs through.
                store.delete(path).await?;
                match store
                    .put_opts(path, payload(&info)?, PutMode::Create.into())
                    .await
                {
                    Ok(_) => Ok(RunLock { location, info }),
                    Err(object_store::Error::AlreadyExists { .. }) => Err(Error::Locked {
                        lock: location.url(),
                        holder: "another run that took over the expired lock first".into(),
                    }),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Removes the lock if it is still ours.
    pub async fn release(self) {
        let path = &self.location.prefix;
        let ours = match self.location.store.get(path).await {
            Ok(r) => r
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<LockInfo>(&b).ok())
                .is_some_and(|held| held == self.info),
            Err(_) => false,
        };
        if !ours {
            warn!(lock = %self.location.url(), "lock was taken over; leaving it in place");
            return;
        }
        if let Err(e) = self.location.store.delete(path).await {
            warn!(lock = %self.location.url(), error = %e, "could not release the lock; it expires by itself");
        }
    }
}
