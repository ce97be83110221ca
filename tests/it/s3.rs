//! The lake on real S3-compatible servers started on loopback by the tests: moto's S3
//! server (AWS conditional-write semantics) and Garage (a production object store that
//! ignores `If-None-Match`). `scripts/tools.sh` (run by `make test`) installs both. In CI
//! (`CI=true`) a missing server fails the test; elsewhere it says loudly that it skipped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use recon::ExitCode;
use recon::lock::{RunLock, probe};
use recon::store::Location;

use crate::common::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(port: u16, child: &mut Child, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running S3-compatible server with one bucket and a key that may use it.
pub struct S3Server {
    child: Option<Child>,
    command: Vec<String>,
    pub port: u16,
    pub bucket: String,
    key: String,
    secret: String,
    region: String,
    _dir: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl S3Server {
    fn spawn(command: &[String], port: u16, what: &str) -> Child {
        let mut child = Command::new(&command[0])
            .args(&command[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        wait_for(port, &mut child, what);
        child
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(Self::spawn(&self.command, self.port, "server"));
    }

    /// moto's S3 server, with bucket `recon`, serving one request at a time. `moto_server`
    /// serves each request on a thread of its own, and its conditional put checks and
    /// then writes (moto/s3/responses.py): two creates of one object at once can both
    /// succeed there, which S3 never allows. Served in turn, its conditional writes are
    /// atomic, as S3's are, so that the lock races test recon, not moto.
    pub fn moto() -> Option<Self> {
        tool("venv/bin/moto_server")?;
        let python = tool("venv/bin/python")?;
        let port = free_port();
        let command: Vec<String> = vec![
            python.to_string_lossy().into(),
            "-c".into(),
            "import sys\n\
             from werkzeug.serving import run_simple\n\
             from moto.server import DomainDispatcherApplication, create_backend_app\n\
             from moto.moto_server.werkzeug_app import MotoRequestHandler\n\
             app = DomainDispatcherApplication(create_backend_app)\n\
             run_simple(sys.argv[1], int(sys.argv[2]), app, threaded=False, \
             request_handler=MotoRequestHandler)"
                .into(),
            "127.0.0.1".into(),
            port.to_string(),
        ];
        let child = Self::spawn(&command, port, "moto_server");
        // moto accepts an unsigned bucket creation.
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(conn, "PUT /recon HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        assert!(
            reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"),
            "creating the moto bucket: {reply}"
        );
        Some(S3Server {
            child: Some(child),
            command,
            port,
            bucket: "recon".into(),
            key: "testing".into(),
            secret: "testing".into(),
            region: "us-east-1".into(),
            _dir: tempfile::tempdir().unwrap(),
        })
    }

    /// Garage, single node, with bucket `recon` and an imported key.
    pub fn garage() -> Option<Self> {
        let bin = tool("bin/garage")?;
        let dir = tempfile::tempdir().unwrap();
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                d = dir.path().display(),
                secret = "4a".repeat(32),
            ),
        )
        .unwrap();
        let garage = |args: &[&str]| -> String {
            let out = Command::new(&bin)
                .arg("-c")
                .arg(&config)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "garage {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let command: Vec<String> = vec![
            bin.to_string_lossy().into(),
            "-c".into(),
            config.to_string_lossy().into(),
            "server".into(),
        ];
        let child = Self::spawn(&command, s3, "garage server");
        let node = garage(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().unwrap().to_string();
        garage(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        garage(&["layout", "apply", "--version", "1"]);
        let key = format!("GK{}", "1".repeat(24));
        let secret = "2".repeat(64);
        garage(&["key", "import", "--yes", "-n", "recon", &key, &secret]);
        garage(&["bucket", "create", "recon"]);
        garage(&[
            "bucket", "allow", "--read", "--write", "--owner", "recon", "--key", "recon",
        ]);
        Some(S3Server {
            child: Some(child),
            command,
            port: s3,
            bucket: "recon".into(),
            key,
            secret,
            region: "garage".into(),
            _dir: dir,
        })
    }

    /// The environment a `recon` process needs for this server.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("AWS_ENDPOINT_URL", self.endpoint())
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", &self.key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_REGION", &self.region)
            .env("RECON_S3_MAX_RETRIES", "2")
            .env("RECON_S3_RETRY_TIMEOUT_SECS", "5")
            .env("RECON_S3_CONNECT_TIMEOUT_SECS", "2")
            .env("RECON_S3_TIMEOUT_SECS", "10");
    }

    /// A client for the test itself, configured explicitly (no process environment).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_bucket_name(&self.bucket)
                .with_access_key_id(&self.key)
                .with_secret_access_key(&self.secret)
                .with_region(&self.region)
                .with_conditional_put(S3ConditionalPut::ETagMatch)
                .build()
                .unwrap(),
        )
    }

    pub fn location(&self, prefix: &str) -> Location {
        Location {
            store: self.store(),
            root: datafusion::execution::object_store::ObjectStoreUrl::parse(format!(
                "s3://{}",
                self.bucket
            ))
            .unwrap(),
            prefix: ObjectPath::from(prefix),
        }
    }
}

pub(crate) fn recon_cmd(fx: &Fixture, server: &S3Server) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recon"));
    cmd.current_dir(fx.path())
        .env_remove("RUST_LOG")
        .args(["--log-level", "error"]);
    server.env(&mut cmd);
    cmd
}

pub(crate) fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Runs the sample job with outputs on `server` and checks them against the file run.
pub(crate) async fn assert_same_as_file_run(server: &S3Server, out_prefix: &str, run_id: &str) {
    let local = tempfile::tempdir().unwrap();
    download(server.store().as_ref(), out_prefix, local.path()).await;
    let s3_runs = manifests(local.path());
    let s3_run = s3_runs
        .iter()
        .find(|m| m.run_id == run_id)
        .expect("committed on s3");

    let fx = Fixture::new();
    let out = Command::new(env!("CARGO_BIN_EXE_recon"))
        .current_dir(fx.path())
        .args([
            "--log-level",
            "error",
            "run",
            "--job",
            "job.toml",
            "--run-date",
            "2024-06-01",
            "--run-id",
            run_id,
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    let file_run = &manifests(&fx.out())[0];
    assert_eq!(
        discrepancies(local.path(), s3_run),
        discrepancies(&fx.out(), file_run)
    );
    let job = recon::job::JobConfig::load(&fx.job()).unwrap();
    let keys = |e: &str| job.entity(e).unwrap().key.clone();
    assert_eq!(
        corrections(local.path(), s3_run, &keys),
        corrections(&fx.out(), file_run, &keys)
    );
    let files = |m: &recon::write::Manifest| -> Vec<(String, Option<u64>)> {
        m.files
            .iter()
            .filter(|f| f.kind != "summary")
            .map(|f| (f.path.clone(), f.rows))
            .collect()
    };
    assert_eq!(files(s3_run), files(file_run));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_honours_conditional_writes_and_one_run_at_a_time() {
    let Some(server) = S3Server::moto() else {
        return;
    };
    let output = server.location("locks-test");
    crate::lock::concurrent_acquire_lets_one_through(&output).await;
    // A stale lock is taken over with If-Match.
    crate::lock::stale_lock_is_taken_over(&output).await;
    crate::lock::race_for_the_lock(&server.location("locks-race"), 20, 20).await;
    crate::lock::a_kept_lock_is_renewed_and_a_lost_one_stops_the_commit(
        &server.location("locks-kept"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_second_run_is_refused_then_outputs_match_the_file_run() {
    let Some(server) = S3Server::moto() else {
        return;
    };
    let fx = Fixture::new();
    let output = server.location("identity");
    let date = recon::generate::sample_run_date();
    let held = RunLock::acquire(
        &output,
        "identity",
        date,
        "holder",
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    let run = |id: &str| {
        recon_cmd(&fx, &server)
            .args(RUN_SAMPLE)
            .args(["--run-id", id, "--output", "s3://recon/identity"])
            .output()
            .unwrap()
    };
    let refused = run("second");
    assert_eq!(
        code(&refused),
        ExitCode::Locked as i32,
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    held.release().await;
    let ok = run("s3-run");
    assert_eq!(code(&ok), 0, "{}", String::from_utf8_lossy(&ok.stderr));
    assert_same_as_file_run(&server, "identity", "s3-run").await;
}

/// The sample lake uploaded to the server, and a fixture job reading it from there.
pub(crate) async fn sample_on(server: &S3Server) -> Fixture {
    let fx = Fixture::new();
    upload(
        server.store().as_ref(),
        "lake",
        &repo().join("sample-data/lake"),
    )
    .await;
    s3_job(&fx);
    fx
}

/// A job like the sample's, with its lake (and so its outputs) in the server's bucket.
fn s3_job(fx: &Fixture) {
    fx.edit_job(|t| {
        t.replace("lake = \"lake\"", "lake = \"s3://recon/lake\"")
            .replace("output = \"out\"\n", "")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_ignores_conditional_writes_and_recon_refuses_to_pretend() {
    let Some(server) = S3Server::garage() else {
        return;
    };
    assert!(
        !probe(&server.location("probe")).await.unwrap(),
        "Garage ignores If-None-Match"
    );
    let fx = sample_on(&server).await;
    let out = recon_cmd(&fx, &server).args(RUN_SAMPLE).output().unwrap();
    assert_eq!(code(&out), ExitCode::Usage as i32);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ignores conditional writes") && stderr.contains("--no-lock"),
        "{stderr}"
    );
    let local = tempfile::tempdir().unwrap();
    download(server.store().as_ref(), "lake/recon", local.path()).await;
    assert!(manifests(&local.path().join("identity")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_lake_end_to_end_equals_the_file_run() {
    let Some(server) = S3Server::garage() else {
        return;
    };
    let fx = sample_on(&server).await;
    let validate = recon_cmd(&fx, &server)
        .args(["validate", "--job", "job.toml", "--run-date", "2024-06-01"])
        .output()
        .unwrap();
    assert_eq!(
        code(&validate),
        0,
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let out = recon_cmd(&fx, &server)
        .args(RUN_SAMPLE)
        .args(["--run-id", "garage-run", "--no-lock"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("s3://recon/lake/recon/identity"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&server.secret)
            && !String::from_utf8_lossy(&out.stderr).contains(&server.secret)
    );
    assert_same_as_file_run(&server, "lake/recon/identity", "garage-run").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_stopped_mid_write_fails_with_the_storage_code_and_commits_nothing() {
    let Some(mut server) = S3Server::garage() else {
        return;
    };
    let fx = Fixture::new();
    // A larger lake, so the run is still writing when the server goes away.
    let big = tempfile::tempdir().unwrap();
    recon::generate::Sample { scale: 1500 }
        .write(big.path())
        .unwrap();
    upload(server.store().as_ref(), "lake", big.path()).await;
    s3_job(&fx);
    fx.edit_job(|t| t.replace("max_correction_share = 0.5", "max_correction_share = 1.0"));
    let mut child = recon_cmd(&fx, &server)
        .args(RUN_SAMPLE)
        .args(["--run-id", "doomed", "--no-lock"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first output file, then take the server down.
    let store = server.store();
    let outputs = ObjectPath::from("lake/recon/identity/discrepancies");
    let start = Instant::now();
    loop {
        let listed: Vec<_> = store
            .list(Some(&outputs))
            .try_collect()
            .await
            .unwrap_or_default();
        if !listed.is_empty() {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before writing anything"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no output appeared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), ExitCode::Storage as i32, "{stderr}");

    server.restart();
    let local = tempfile::tempdir().unwrap();
    download(server.store().as_ref(), "lake/recon/identity", local.path()).await;
    assert!(
        manifests(local.path()).is_empty(),
        "nothing looks committed"
    );

    let rerun = recon_cmd(&fx, &server)
        .args(RUN_SAMPLE)
        .args(["--run-id", "rerun", "--no-lock"])
        .output()
        .unwrap();
    assert_eq!(
        code(&rerun),
        0,
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let local = tempfile::tempdir().unwrap();
    download(server.store().as_ref(), "lake/recon/identity", local.path()).await;
    let runs = manifests(local.path());
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].run_id, "rerun");
}

#[test]
fn moto_racing_processes_never_hold_the_lock_together() {
    use object_store::ObjectStoreExt;
    let Some(server) = S3Server::moto() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let output = server.location("locks-processes");
    let lock = output
        .child(&recon::lock::lock_path(recon::generate::sample_run_date()))
        .prefix;
    crate::lock::race_processes(
        "s3://recon/locks-processes",
        &|cmd| server.env(cmd),
        &|stale| {
            let bytes = serde_json::to_vec(stale).unwrap();
            runtime
                .block_on(output.store.put(&lock, bytes.into()))
                .unwrap();
        },
        &|| runtime.block_on(output.store.head(&lock)).is_ok(),
    );
}

/// The multipart uploads in progress in the server's bucket, listed with boto3 from the
/// tools' venv (object_store has no such listing).
fn multipart_uploads(server: &S3Server) -> usize {
    let python = tool("venv/bin/python").expect("the tools' venv");
    let mut cmd = Command::new(python);
    server.env(&mut cmd);
    let out = cmd
        .args([
            "-c",
            "import boto3, os, sys\n\
             c = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
             print(len(c.list_multipart_uploads(Bucket=sys.argv[1]).get('Uploads', [])))",
            &server.bucket,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A file its stage abandons part way (the stage failed or was stopped) leaves no
/// multipart upload behind: its writer aborts the upload. The file is large enough
/// (16 MiB of incompressible values) for the upload to be a multipart one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_an_abandoned_file_leaves_no_multipart_upload() {
    use arrow::array::{ArrayRef, BinaryArray, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    let Some(server) = S3Server::moto() else {
        return;
    };
    let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Binary, false)]));
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    let mut sink = recon::write::ParquetSink::create(
        &server.location("abandoned"),
        "big.parquet".into(),
        Arc::clone(&schema),
        16,
    )
    .unwrap();
    for _ in 0..4 {
        let values: Vec<Vec<u8>> = (0..16).map(|_| noise(256 << 10)).collect();
        let column: ArrayRef = Arc::new(BinaryArray::from_iter_values(values));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![column]).unwrap();
        sink.write(&batch).await.unwrap();
    }
    let wait = |want: fn(usize) -> bool, what: &str| {
        let start = Instant::now();
        while !want(multipart_uploads(&server)) {
            assert!(start.elapsed() < Duration::from_secs(30), "{what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait(|n| n == 1, "the file's multipart upload starts");
    drop(sink);
    wait(|n| n == 0, "the abandoned upload is aborted");
    assert!(
        server
            .store()
            .head(&ObjectPath::from("abandoned/big.parquet"))
            .await
            .is_err(),
        "an abandoned file never appears"
    );
}
