//! The example Airflow DAG, `examples/airflow/recon_dag.py`, run by `airflow dags test`
//! with the recon under test: Airflow from `scripts/tools.sh` (its own venv), SQLite
//! metadata in a temp dir, the sample's tables in two PostgreSQL databases that the DAG
//! exports, diffs and applies to. One test per branch of the DAG's exit-code policy, each
//! asserting which tasks succeeded, were skipped and failed (and how often they were
//! tried), read from Airflow's database. In CI (`CI=true`) a missing Airflow fails.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use crate::db::{Dialect, Pg, table_from_parquet};

/// The DAG reconciles the day before its logical date.
const LOGICAL_DATE: &str = "2024-06-02";
const RUN_DATE: &str = "2024-06-01";
const ENTITIES: [&str; 4] = ["tenants", "users", "groups", "memberships"];

/// An Airflow home of its own (SQLite, examples off) whose DAG folder holds the example.
struct Airflow {
    bin: PathBuf,
    home: tempfile::TempDir,
}

impl Airflow {
    fn new() -> Option<Self> {
        let bin = tool("airflow-venv/bin/airflow")?;
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("dags")).unwrap();
        std::fs::copy(
            repo().join("examples/airflow/recon_dag.py"),
            home.path().join("dags/recon_dag.py"),
        )
        .unwrap();
        let airflow = Airflow { bin, home };
        let out = airflow.command().args(["db", "migrate"]).output().unwrap();
        assert!(
            out.status.success(),
            "airflow db migrate: {}",
            describe(&out)
        );
        Some(airflow)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (name, _) in std::env::vars_os() {
            let text = name.to_string_lossy();
            if text.starts_with("AIRFLOW") || text == "RECON_DAG_ID" || text == "RECON_SCHEDULE" {
                cmd.env_remove(name);
            }
        }
        cmd.current_dir(self.home.path())
            .env("AIRFLOW_HOME", self.home.path())
            .env("AIRFLOW__CORE__DAGS_FOLDER", self.home.path().join("dags"))
            .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
            .env("RECON_BIN", env!("CARGO_BIN_EXE_recon"))
            .env("RECON_APPLY_SYSTEM", "service")
            // One retry, a second later: enough to see which codes are retried.
            .env("RECON_RETRIES", "1")
            .env("RECON_RETRY_DELAY_SECS", "1");
        cmd
    }

    /// `airflow dags test` of the example for the logical date, with `env` added.
    fn dags_test(&self, env: &[(&str, String)]) -> Output {
        let mut cmd = self.command();
        cmd.args(["dags", "test", "recon_nightly", LOGICAL_DATE]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// Rows of a query on Airflow's SQLite database, `|`-separated, through the venv's
    /// Python (no SQLite client needed).
    fn query(&self, sql: &str) -> Vec<String> {
        let python = self.bin.with_file_name("python");
        let out = Command::new(python)
            .args([
                "-c",
                "import sqlite3, sys\n\
                 for row in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]):\n    \
                 print('|'.join(str(v) for v in row))",
            ])
            .arg(self.home.path().join("airflow.db"))
            .arg(sql)
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql}: {}", describe(&out));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Task id → "state, try N" for the one DAG run.
    fn tasks(&self) -> BTreeMap<String, String> {
        self.query("SELECT task_id, state, try_number FROM task_instance")
            .into_iter()
            .map(|row| {
                let f: Vec<&str> = row.split('|').collect();
                (f[0].to_string(), format!("{}, try {}", f[1], f[2]))
            })
            .collect()
    }

    fn dag_run_state(&self) -> String {
        self.query("SELECT state FROM dag_run").join(",")
    }
}

fn expect(tasks: &[(&str, &str)]) -> BTreeMap<String, String> {
    tasks
        .iter()
        .map(|(t, s)| (t.to_string(), s.to_string()))
        .collect()
}

/// What `airflow dags test` printed, the task logs included.
fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Its last 60 lines, for assertion messages.
fn tail(out: &Output) -> String {
    let text = output_text(out);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// The sample job with an exporter for each system (both PostgreSQL, their URLs in
/// `MONOLITH_DATABASE_URL` and `SERVICE_DATABASE_URL`), its lake and outputs in `dir`.
fn write_job(dir: &Path, max_correction_share: &str) -> PathBuf {
    let job = std::fs::read_to_string(repo().join("jobs/identity.toml"))
        .unwrap()
        .replace("lake = \"../sample-data/lake\"", "lake = \"lake\"")
        .replace("output = \"../recon-output/identity\"", "output = \"out\"")
        .replace(
            "max_correction_share = 0.5",
            &format!("max_correction_share = {max_correction_share}"),
        )
        .replacen(
            "[[entities]]",
            "[exporters.monolith]\nkind = \"postgres\"\nurl_env = \"MONOLITH_DATABASE_URL\"\n\n\
             [exporters.service]\nkind = \"postgres\"\nurl_env = \"SERVICE_DATABASE_URL\"\n\n[[entities]]",
            1,
        );
    std::fs::write(dir.join("job.toml"), job).unwrap();
    dir.join("job.toml")
}

/// The sample's tables in a PostgreSQL "monolith" and "service", and the sample job with
/// an exporter for each, its lake and outputs in a temp dir.
struct Systems {
    monolith: Pg,
    service: Pg,
    dir: tempfile::TempDir,
}

impl Systems {
    fn new(max_correction_share: &str) -> Self {
        let monolith = Pg::create("af_monolith");
        let service = Pg::create("af_service");
        let lake = repo().join("sample-data/lake/snapshots");
        for entity in ENTITIES {
            for (system, db) in [("monolith", &monolith), ("service", &service)] {
                db.exec(&table_from_parquet(
                    Dialect::Postgres,
                    entity,
                    &lake.join(format!(
                        "{system}/{entity}/run_date={RUN_DATE}/part-00000.parquet"
                    )),
                ));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        write_job(dir.path(), max_correction_share);
        Systems {
            monolith,
            service,
            dir,
        }
    }

    /// What the DAG's tasks need: the job and the databases' URLs.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RECON_JOB", self.job()),
            ("MONOLITH_DATABASE_URL", self.monolith.url()),
            ("SERVICE_DATABASE_URL", self.service.url()),
        ]
    }

    fn job(&self) -> String {
        self.dir.path().join("job.toml").to_string_lossy().into()
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// Every row of the service's tables, as text.
    fn dump_service(&self) -> String {
        ENTITIES
            .iter()
            .map(|e| {
                self.service
                    .exec(&format!("SELECT t::text FROM {e} t ORDER BY 1;"))
            })
            .collect()
    }
}

/// The run id recon committed, with the attempt it was made by.
fn committed_run_id(systems: &Systems) -> String {
    let m = manifests(&systems.out());
    assert_eq!(m.len(), 1, "one committed run");
    m[0].run_id.clone()
}

#[test]
fn exit_0_the_run_is_applied_and_the_replica_repaired() {
    let Some(airflow) = Airflow::new() else {
        return;
    };
    let systems = Systems::new("0.5");
    let out = airflow.dags_test(&systems.env());
    assert!(out.status.success(), "{}", tail(&out));
    assert_eq!(
        airflow.tasks(),
        expect(&[
            ("recon_run", "success, try 1"),
            ("route_run", "success, try 1"),
            ("recon_apply", "success, try 1"),
            ("route_apply", "success, try 1"),
            ("alert_guardrail", "skipped, try 0"),
            ("alert_apply_incomplete", "skipped, try 0"),
        ]),
        "{}",
        tail(&out)
    );
    assert_eq!(airflow.dag_run_state(), "success");

    // The run id is the DAG run's, made safe for recon, and the attempt's.
    let run_id = committed_run_id(&systems);
    assert!(
        run_id.starts_with("manual__") && run_id.ends_with("-1"),
        "{run_id}"
    );
    // XCom holds what the branch and the apply need, not recon's summary.
    let xcom = airflow.query("SELECT key, value FROM xcom WHERE task_id = 'recon_run'");
    assert_eq!(xcom.len(), 1, "{xcom:?}");
    let (key, value) = xcom[0].split_once('|').unwrap();
    assert_eq!(key, "return_value");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(value).unwrap(),
        serde_json::json!({"exit_code": 0, "run_id": run_id}),
    );
    // The apply applied that run and left its report beside it.
    let applies = systems.out().join(format!(
        "applies/run_date={RUN_DATE}/run_id={run_id}/system=service"
    ));
    assert_eq!(files_below(&applies).len(), 1, "{}", applies.display());

    // The next night finds nothing left to correct in the service.
    let rerun = Command::new(env!("CARGO_BIN_EXE_recon"))
        .args(["run", "--job", &systems.job(), "--run-date", "2024-06-02"])
        .envs(systems.env())
        .output()
        .unwrap();
    assert!(rerun.status.success(), "{}", describe(&rerun));
    let m = manifests(&systems.out());
    let next = m.iter().find(|m| m.run_id != run_id).unwrap();
    let left: Vec<_> = next
        .files
        .iter()
        .filter(|f| f.kind == "corrections" && f.system.as_deref() == Some("service"))
        .map(|f| f.path.clone())
        .collect();
    assert!(
        left.is_empty(),
        "corrections left for the service: {left:?}"
    );
}

#[test]
fn exit_3_a_tripped_guardrail_alerts_and_applies_nothing() {
    let Some(airflow) = Airflow::new() else {
        return;
    };
    let systems = Systems::new("0.01");
    let before = systems.dump_service();
    let out = airflow.dags_test(&systems.env());
    assert!(!out.status.success(), "the DAG run fails: {}", tail(&out));
    assert_eq!(
        airflow.tasks(),
        expect(&[
            ("recon_run", "success, try 1"),
            ("route_run", "success, try 1"),
            ("alert_guardrail", "failed, try 1"),
            ("recon_apply", "skipped, try 0"),
            ("route_apply", "skipped, try 0"),
            ("alert_apply_incomplete", "skipped, try 0"),
        ]),
        "{}",
        tail(&out)
    );
    assert_eq!(airflow.dag_run_state(), "failed");
    // Exported and diffed once (not retried), committed with its entities withheld.
    let m = manifests(&systems.out());
    assert_eq!(m.len(), 1);
    assert!(!m[0].withheld.is_empty());
    assert!(output_text(&out).contains("a guardrail tripped"));
    assert!(!systems.out().join("applies").exists());
    assert_eq!(systems.dump_service(), before, "the service is untouched");
}

#[test]
fn exit_7_an_incomplete_apply_alerts() {
    let Some(airflow) = Airflow::new() else {
        return;
    };
    let systems = Systems::new("0.5");
    // The insert of tenant 5 (a planted correction) fails on a check the job knows nothing of.
    systems
        .service
        .exec("ALTER TABLE tenants ADD CONSTRAINT no_tenant_5 CHECK (tenant_id <> 5);");
    let out = airflow.dags_test(&systems.env());
    assert!(!out.status.success(), "the DAG run fails: {}", tail(&out));
    assert_eq!(
        airflow.tasks(),
        expect(&[
            ("recon_run", "success, try 1"),
            ("route_run", "success, try 1"),
            ("recon_apply", "success, try 1"),
            ("route_apply", "success, try 1"),
            ("alert_apply_incomplete", "failed, try 1"),
            ("alert_guardrail", "skipped, try 0"),
        ]),
        "{}",
        tail(&out)
    );
    assert_eq!(airflow.dag_run_state(), "failed");
    assert!(output_text(&out).contains("some corrections were stale or failed"));
    let run_id = committed_run_id(&systems);
    let applies = systems.out().join(format!(
        "applies/run_date={RUN_DATE}/run_id={run_id}/system=service"
    ));
    assert_eq!(files_below(&applies).len(), 1, "{}", applies.display());
}

/// Both databases unreachable: `recon run` exits 5, and is retried with a new run id.
#[test]
fn exit_5_is_retried_with_a_new_run_id() {
    let Some(airflow) = Airflow::new() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), "0.5");
    let closed = {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("postgres://postgres@127.0.0.1:{port}/nowhere")
    };
    let out = airflow.dags_test(&[
        ("RECON_JOB", job.to_string_lossy().into()),
        ("MONOLITH_DATABASE_URL", closed.clone()),
        ("SERVICE_DATABASE_URL", closed),
    ]);
    assert!(!out.status.success(), "{}", tail(&out));
    assert_eq!(
        airflow.tasks(),
        expect(&[
            ("recon_run", "failed, try 2"),
            ("route_run", "upstream_failed, try 0"),
            ("recon_apply", "upstream_failed, try 0"),
            ("route_apply", "upstream_failed, try 0"),
            ("alert_guardrail", "upstream_failed, try 0"),
            ("alert_apply_incomplete", "upstream_failed, try 0"),
        ]),
        "{}",
        tail(&out)
    );
    let text = output_text(&out);
    for attempt in ["-1 ", "-2 "] {
        assert!(
            text.lines()
                .any(|l| l.contains(" run --job ") && l.contains(&format!("{attempt}--format"))),
            "an attempt with run id …{attempt}: {}",
            tail(&out)
        );
    }
    assert!(text.contains("exited with code 5"), "{}", tail(&out));
    assert!(manifests(&dir.path().join("out")).is_empty());
}

/// A job file with an unknown key: `recon run` exits 2, and is not retried.
#[test]
fn exit_2_fails_without_a_retry() {
    let Some(airflow) = Airflow::new() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        "[job]\nname = \"bad\"\nlake = \"lake\"\nlaek = \"typo\"\n",
    )
    .unwrap();
    let out = airflow.dags_test(&[("RECON_JOB", job.to_string_lossy().into())]);
    assert!(!out.status.success(), "{}", tail(&out));
    assert_eq!(
        airflow.tasks(),
        expect(&[
            ("recon_run", "failed, try 1"),
            ("route_run", "upstream_failed, try 0"),
            ("recon_apply", "upstream_failed, try 0"),
            ("route_apply", "upstream_failed, try 0"),
            ("alert_guardrail", "upstream_failed, try 0"),
            ("alert_apply_incomplete", "upstream_failed, try 0"),
        ]),
        "{}",
        tail(&out)
    );
    assert!(
        output_text(&out).contains("exited with code 2"),
        "{}",
        tail(&out)
    );
}
