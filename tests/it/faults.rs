//! Faults: runs killed at random points, stopped by a signal, and run against a store
//! behind a proxy that drops, delays, resets and truncates. Afterwards nothing is half
//! committed, `_latest.json` points only at complete runs, and a rerun gives the same
//! outputs.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use recon::write::{LatestPointer, Manifest};

use crate::common::*;

/// A small deterministic generator (the cases print their seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed() -> u64 {
    std::env::var("RECON_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

fn recon(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recon"));
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0")
        .args(["--log-level", "error"]);
    cmd
}

/// The sample job over a larger lake (scale 40), so that a run lasts long enough to be
/// stopped at many points.
fn larger_sample() -> Fixture {
    let fx = Fixture::new();
    let out = recon(fx.path())
        .args(["generate", "--out", "lake", "--scale", "40"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    fx
}

/// Every committed run below `out` is complete (each file its manifest lists is there,
/// at its size), and each `_latest.json` names a committed run.
fn assert_committed_runs_complete(out: &Path) {
    for m in manifests(out) {
        for f in &m.files {
            let path = out.join(&f.path);
            let size = std::fs::metadata(&path)
                .unwrap_or_else(|e| panic!("run {} lists {} ({e})", m.run_id, f.path))
                .len();
            assert_eq!(size, f.size, "run {}: {}", m.run_id, f.path);
        }
    }
    let runs = out.join("runs");
    let Ok(dates) = std::fs::read_dir(&runs) else {
        return;
    };
    for date in dates {
        let latest = date.unwrap().path().join("_latest.json");
        if let Ok(bytes) = std::fs::read(&latest) {
            let p: LatestPointer = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", latest.display()));
            let m: Manifest =
                serde_json::from_slice(&std::fs::read(out.join(&p.manifest)).unwrap()).unwrap();
            assert_eq!(m.run_id, p.run_id);
        }
    }
}

/// The run ids with a folder below `out` but no manifest: abandoned runs.
fn abandoned(out: &Path) -> Vec<String> {
    let committed: Vec<String> = manifests(out).into_iter().map(|m| m.run_id).collect();
    let mut ids = std::collections::BTreeSet::new();
    for kind in ["discrepancies", "corrections", "events", "runs"] {
        let Ok(dates) = std::fs::read_dir(out.join(kind)) else {
            continue;
        };
        for date in dates {
            let Ok(runs) = std::fs::read_dir(date.unwrap().path()) else {
                continue;
            };
            for r in runs {
                let name = r.unwrap().file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_prefix("run_id=") {
                    ids.insert(id.to_string());
                }
            }
        }
    }
    ids.into_iter()
        .filter(|id| !committed.contains(id))
        .collect()
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "the process did not stop in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Twenty runs killed (SIGKILL) at points spread over a run's length: each leaves
/// either a complete committed run or no commit, the next run takes the dead holder's
/// lock at once and removes the abandoned run's files, and the final run's outputs are
/// the clean run's.
#[test]
fn killed_runs_never_half_commit_and_a_rerun_gives_the_same_outputs() {
    let seed = seed();
    let mut rng = Rng(seed);
    let reference = larger_sample();
    let started = Instant::now();
    let out = recon(reference.path())
        .args(RUN_SAMPLE)
        .args(["--run-id", "reference"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let length = started.elapsed();
    let expected = output_rows(&reference.out(), &manifests(&reference.out())[0]);

    let fx = larger_sample();
    let kills = 20;
    let mut committed_by_killed = 0;
    for i in 0..kills {
        // Spread over the run's length, with a little past it.
        let at = length.mul_f64((i as f64 + rng.unit()) / kills as f64 * 1.1);
        let mut child = recon(fx.path())
            .args(RUN_SAMPLE)
            .args(["--run-id", &format!("killed-{i}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let _ = child.kill();
        let status = wait_with_timeout(&mut child, Duration::from_secs(60));
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(
            status.code().is_none() || status.code() == Some(0),
            "seed {seed}, kill {i} at {at:?}: {status} {stderr}"
        );
        assert_committed_runs_complete(&fx.out());
        let left = abandoned(&fx.out());
        assert!(
            left.len() <= 1 && left.iter().all(|id| *id == format!("killed-{i}")),
            "seed {seed}, kill {i}: only the last killed run may have left files: {left:?}"
        );
        if manifests(&fx.out())
            .iter()
            .any(|m| m.run_id == format!("killed-{i}"))
        {
            committed_by_killed += 1;
        }
    }
    // The last kill's lock has a dead holder: the rerun takes it at once.
    let out = recon(fx.path())
        .args(RUN_SAMPLE)
        .args(["--run-id", "final"])
        .output()
        .unwrap();
    assert!(out.status.success(), "seed {seed}: {}", describe(&out));
    assert_committed_runs_complete(&fx.out());
    assert!(
        abandoned(&fx.out()).is_empty(),
        "seed {seed}: {:?}",
        abandoned(&fx.out())
    );
    for m in manifests(&fx.out()) {
        assert_eq!(
            output_rows(&fx.out(), &m),
            expected,
            "seed {seed}: run {} differs from the clean run",
            m.run_id
        );
    }
    eprintln!(
        "{kills} kill points (seed {seed}, run length {length:?}): {committed_by_killed} killed after their commit"
    );
}

/// SIGTERM part way: the run stops with 143, removes its own files, releases its lock
/// and commits nothing; the next run goes ahead at once.
#[test]
fn a_terminated_run_cleans_up_releases_its_lock_and_commits_nothing() {
    let fx = larger_sample();
    let mut stopped_part_way = 0;
    for (i, after) in [150u64, 400, 800].into_iter().enumerate() {
        let id = format!("terminated-{i}");
        let mut child = recon(fx.path())
            .args(RUN_SAMPLE)
            .args(["--run-id", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(after));
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = wait_with_timeout(&mut child, Duration::from_secs(30));
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let committed = manifests(&fx.out()).iter().any(|m| m.run_id == id);
        match status.code() {
            Some(143) => {
                stopped_part_way += 1;
                assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
                assert!(!committed, "a terminated run commits nothing");
                assert!(
                    abandoned(&fx.out()).is_empty(),
                    "{:?}",
                    abandoned(&fx.out())
                );
            }
            Some(0) => assert!(committed),
            other => panic!("after {after} ms: {other:?} {stderr}"),
        }
        assert!(
            !fx.out()
                .join(recon::lock::lock_path(recon::generate::sample_run_date()))
                .exists(),
            "the lock is released"
        );
    }
    assert!(stopped_part_way > 0, "no run was stopped part way");
}

/// A TCP proxy in front of a server that, per connection, passes it through, delays
/// it, resets it, or cuts the response short, at random.
struct FlakyProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Faults injected so far.
    faults: Arc<AtomicU64>,
}

impl FlakyProxy {
    fn start(upstream: u16, fault_share: f64, seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let faults = Arc::new(AtomicU64::new(0));
        let (stop2, faults2) = (Arc::clone(&stop), Arc::clone(&faults));
        std::thread::spawn(move || {
            let mut rng = Rng(seed | 1);
            while !stop2.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let fault = if rng.unit() < fault_share {
                    faults2.fetch_add(1, Ordering::Relaxed);
                    1 + rng.next() % 3
                } else {
                    0
                };
                let cut = 1 + rng.next() as usize % 2000;
                std::thread::spawn(move || relay(client, upstream, fault, cut));
            }
        });
        FlakyProxy { port, stop, faults }
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Relays one connection. Fault 0: none; 1: a reset before anything is relayed; 2: a
/// delay of a second before the response; 3: the response cut after `cut` bytes.
fn relay(client: TcpStream, upstream: u16, fault: u64, cut: usize) {
    if fault == 1 {
        // SO_LINGER of zero: closing sends a reset, not a clean end.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a socket we own, with a value of the size it says.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&client),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    if fault == 2 {
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut sent = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        let n = match s_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = if fault == 3 {
            n.min(cut.saturating_sub(sent))
        } else {
            n
        };
        if n == 0 || c_write.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
        if fault == 3 && sent >= cut {
            break;
        }
    }
    let _ = c_write.shutdown(Shutdown::Both);
    let _ = s_read.shutdown(Shutdown::Both);
    let _ = up.join();
}

/// Runs against moto behind the flaky proxy: each either commits exactly once with the
/// clean run's outputs or commits nothing and exits 5 (or 6, when a lock a failed run
/// could not release is still live).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_store_gives_a_clean_commit_or_none() {
    let Some(server) = crate::s3::S3Server::moto() else {
        return;
    };
    let seed = seed();
    let fx = crate::s3::sample_on(&server).await;
    let rounds = 12;
    let (mut ok, mut failed, mut faults) = (0, 0, 0);
    for round in 0..rounds {
        let share = [0.05, 0.15, 0.3][round % 3];
        let proxy = FlakyProxy::start(server.port, share, seed.wrapping_add(round as u64));
        let id = format!("flaky-{round}");
        let mut cmd = crate::s3::recon_cmd(&fx, &server);
        cmd.env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", proxy.port),
        )
        .env("RECON_S3_RETRY_TIMEOUT_SECS", "20")
        .args(RUN_SAMPLE)
        .args(["--run-id", &id, "--lock-ttl-secs", "5"]);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        faults += proxy.faults.load(Ordering::Relaxed);
        drop(proxy);
        let local = tempfile::tempdir().unwrap();
        download(server.store().as_ref(), "lake/recon", local.path()).await;
        let out_dir = local.path().join("identity");
        let committed: Vec<Manifest> = manifests(&out_dir)
            .into_iter()
            .filter(|m| m.run_id == id)
            .collect();
        match out.status.code() {
            Some(0) => {
                ok += 1;
                assert_eq!(committed.len(), 1, "seed {seed}, round {round}");
                crate::s3::assert_same_as_file_run(&server, "lake/recon/identity", &id).await;
            }
            Some(5) | Some(6) => {
                failed += 1;
                assert!(
                    committed.is_empty(),
                    "seed {seed}, round {round}: {}",
                    describe(&out)
                );
            }
            other => panic!(
                "seed {seed}, round {round}: exit {other:?}: {}",
                describe(&out)
            ),
        }
        assert_committed_runs_complete(&out_dir);
        // A lock a failed run could not release has a dead holder: the next round
        // takes it over at once.
    }
    eprintln!(
        "{rounds} flaky rounds (seed {seed}): {ok} committed, {failed} failed cleanly, {faults} faults injected"
    );
    assert!(ok > 0, "seed {seed}: no round committed");
}

/// An export of a CSV drop into a snapshot, in `dir` (job `job.toml`, `rows` rows).
fn csv_export_job(dir: &Path, rows: usize) {
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let mut csv = String::from("id;name;amount\n");
    for i in 0..rows {
        csv.push_str(&format!("{i};name-{i};{}.{:02}\n", i % 1000, i % 100));
    }
    std::fs::write(inbox.join("items.csv"), csv).unwrap();
    std::fs::write(
        dir.join("job.toml"),
        r#"[job]
name = "drop"
lake = "lake"
output = "out"
[systems]
source = "drop"
replica = "other"
[exporters.drop]
kind = "files"
[[entities]]
name = "items"
key = ["id"]
export.drop = { path = "inbox/items.csv", format = "csv", delimiter = ";", columns = ["id bigint", "name text", "amount decimal(10,2)"] }
"#,
    )
    .unwrap();
}

/// The export's snapshot folder: its manifest, if committed, lists complete files;
/// returns the rows it says it holds.
fn committed_snapshot(dir: &Path) -> Option<u64> {
    let folder = dir.join("lake/snapshots/drop/items/run_date=2024-06-01");
    let bytes = std::fs::read(folder.join("_manifest.json")).ok()?;
    let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let mut rows = 0;
    for f in m["files"].as_array().unwrap() {
        let path = folder.join(f["path"].as_str().unwrap());
        let size = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("the manifest lists {} ({e})", path.display()))
            .len();
        assert_eq!(size, f["size"].as_u64().unwrap(), "{}", path.display());
        let read: usize = read_parquet(&path).iter().map(|b| b.num_rows()).sum();
        assert_eq!(
            read as u64,
            f["rows"].as_u64().unwrap(),
            "{}",
            path.display()
        );
        rows += read as u64;
    }
    Some(rows)
}

/// Exports killed at points spread over an export's length: the snapshot folder is
/// always either committed whole or left as it was, and a rerun exports every row.
#[test]
fn killed_exports_never_half_commit_a_snapshot() {
    let seed = seed();
    let mut rng = Rng(seed);
    let rows = 200_000;
    let reference = tempfile::tempdir().unwrap();
    csv_export_job(reference.path(), rows);
    let export = |dir: &Path| {
        let mut cmd = recon(dir);
        cmd.args(["export", "--job", "job.toml", "--run-date", "2024-06-01"]);
        cmd
    };
    let started = Instant::now();
    let out = export(reference.path()).output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let length = started.elapsed();
    assert_eq!(committed_snapshot(reference.path()), Some(rows as u64));

    let dir = tempfile::tempdir().unwrap();
    csv_export_job(dir.path(), rows);
    let kills = 8;
    for i in 0..kills {
        let at = length.mul_f64((i as f64 + rng.unit()) / kills as f64 * 1.1);
        let mut child = export(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let _ = child.kill();
        wait_with_timeout(&mut child, Duration::from_secs(60));
        if let Some(n) = committed_snapshot(dir.path()) {
            assert_eq!(n, rows as u64, "seed {seed}, kill {i} at {at:?}");
        }
    }
    let out = export(dir.path()).output().unwrap();
    assert!(out.status.success(), "seed {seed}: {}", describe(&out));
    assert_eq!(committed_snapshot(dir.path()), Some(rows as u64));
    eprintln!("{kills} export kill points (seed {seed}, export length {length:?})");
}
