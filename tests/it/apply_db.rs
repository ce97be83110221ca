//! The apply stage against the machine's PostgreSQL and MariaDB, with foreign keys
//! enforced: export → diff → apply → export → diff ends clean; rows changed since the
//! snapshot are skipped as stale; a second apply is a no-op; a dry run writes nothing;
//! an apply that stopped part way finishes the rest when rerun.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::describe;
use crate::db::{My, Pg};

/// Runs SQL against the replica database and returns what it printed.
type Probe = Box<dyn Fn(&str) -> String>;

const DATE: &str = "2024-06-01";

/// Schema with foreign keys; `{ts}` is the dialect's timestamp type.
const DDL: &str = "
CREATE TABLE tenants (tenant_id bigint PRIMARY KEY, name varchar(64) NOT NULL, plan varchar(16));
CREATE TABLE users (tenant_id bigint NOT NULL REFERENCES tenants (tenant_id), user_id varchar(16) NOT NULL,
  email varchar(128), balance decimal(12,2), seen_at {ts}, PRIMARY KEY (tenant_id, user_id));
CREATE TABLE memberships (tenant_id bigint NOT NULL, user_id varchar(16) NOT NULL, group_name varchar(32) NOT NULL,
  role varchar(16), PRIMARY KEY (tenant_id, user_id, group_name),
  FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, user_id));
";

const SOURCE_ROWS: &str = "
INSERT INTO tenants VALUES (1, 'acme', 'pro'), (2, 'bolt', 'free'), (3, 'core', 'pro');
INSERT INTO users VALUES (1, 'u1', 'a@acme.io', 10.50, '2024-05-01 10:00:00.123456'),
  (1, 'u2', 'b@acme.io', 0.00, NULL), (2, 'u1', 'c@bolt.io', 99.99, '2024-05-02 11:00:00'),
  (3, 'u1', 'd@core.io', 5.25, '2024-05-03 12:00:00');
INSERT INTO memberships VALUES (1, 'u1', 'admins', 'owner'), (1, 'u2', 'admins', 'member'), (3, 'u1', 'staff', 'member');
";

/// The replica: tenant 3 missing (with its user and membership), tenant 9 extra (with
/// its user and membership), and four fields that differ.
const REPLICA_ROWS: &str = "
INSERT INTO tenants VALUES (1, 'acme', 'pro'), (2, 'bolt', 'basic'), (9, 'zed', 'free');
INSERT INTO users VALUES (1, 'u1', 'a@acme.io', 10.50, '2024-05-01 10:00:00.123456'),
  (1, 'u2', 'old@acme.io', 0.00, NULL), (2, 'u1', 'c@bolt.io', 98.99, '2024-05-02 11:00:00'),
  (9, 'u1', 'z@zed.io', 1.00, NULL);
INSERT INTO memberships VALUES (1, 'u1', 'admins', 'owner'), (1, 'u2', 'admins', 'viewer'), (9, 'u1', 'staff', 'member');
";

const DUMP: &str = "SELECT tenant_id, name, plan FROM tenants ORDER BY 1;
SELECT tenant_id, user_id, email, balance, seen_at FROM users ORDER BY 1, 2;
SELECT tenant_id, user_id, group_name, role FROM memberships ORDER BY 1, 2, 3;";

/// Both databases and the job, one direction: (source dialect, replica dialect).
struct Cycle {
    dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
    replica: Probe,
    _dbs: (Option<Pg>, Option<My>, Option<Pg>, Option<My>),
}

impl Cycle {
    /// Source in PostgreSQL and replica in MariaDB, or the other way round.
    fn new(replica_is_mariadb: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pg = Pg::create("apply");
        let my = My::create("apply");
        pg.exec(&DDL.replace("{ts}", "timestamp"));
        my.exec(&DDL.replace("{ts}", "datetime(6)"));
        let (src_kind, dst_kind) = if replica_is_mariadb {
            pg.exec(SOURCE_ROWS);
            my.exec(REPLICA_ROWS);
            ("postgres", "mysql")
        } else {
            my.exec(SOURCE_ROWS);
            pg.exec(REPLICA_ROWS);
            ("mysql", "postgres")
        };
        let (src_url, dst_url) = if replica_is_mariadb {
            (pg.url(), my.url())
        } else {
            (my.url(), pg.url())
        };
        std::fs::write(
            dir.path().join("job.toml"),
            format!(
                r#"[job]
name = "cycle"
lake = "lake"
output = "out"
[systems]
source = "monolith"
replica = "service"
[guardrails]
max_correction_share = 1.0
[exporters.monolith]
kind = "{src_kind}"
url_env = "SRC_URL"
[exporters.service]
kind = "{dst_kind}"
url_env = "DST_URL"
[[entities]]
name = "tenants"
key = ["tenant_id"]
[[entities]]
name = "users"
key = ["tenant_id", "user_id"]
depends_on = ["tenants"]
[[entities]]
name = "memberships"
key = ["tenant_id", "user_id", "group_name"]
depends_on = ["users"]
"#
            ),
        )
        .unwrap();
        let env = vec![("SRC_URL", src_url), ("DST_URL", dst_url)];
        let (replica, dbs): (Probe, _) = if replica_is_mariadb {
            let name = my.name.clone();
            let probe = My { name };
            (
                Box::new(move |sql: &str| probe.exec(sql)),
                (Some(pg), None, None, Some(my)),
            )
        } else {
            let name = pg.name.clone();
            let probe = Pg { name };
            (
                Box::new(move |sql: &str| probe.exec(sql)),
                (None, Some(my), Some(pg), None),
            )
        };
        Cycle {
            dir,
            env,
            replica,
            _dbs: dbs,
        }
    }

    fn recon(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_recon"));
        cmd.current_dir(self.dir.path()).args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn run(&self) -> serde_json::Value {
        let out = self.recon(&[
            "run",
            "--job",
            "job.toml",
            "--run-date",
            DATE,
            "--format",
            "json",
        ]);
        assert!(out.status.success(), "{}", describe(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn apply(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "apply",
            "--job",
            "job.toml",
            "--run-date",
            DATE,
            "--system",
            "service",
        ];
        if !extra.contains(&"--format") {
            args.extend_from_slice(&["--format", "json"]);
        }
        args.extend_from_slice(extra);
        self.recon(&args)
    }

    fn dump(&self) -> String {
        (self.replica)(DUMP)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn discrepancies(summary: &serde_json::Value) -> u64 {
    summary["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["discrepancies"].as_u64().unwrap())
        .sum()
}

/// entity → op → outcome → count, from an apply's JSON summary.
fn count(summary: &serde_json::Value, entity: &str, op: &str, outcome: &str) -> u64 {
    summary["counts"][entity][op][outcome].as_u64().unwrap_or(0)
}

fn total(summary: &serde_json::Value, outcome: &str) -> u64 {
    let mut n = 0;
    for ops in summary["counts"].as_object().unwrap().values() {
        for outcomes in ops.as_object().unwrap().values() {
            n += outcomes[outcome].as_u64().unwrap_or(0);
        }
    }
    n
}

fn full_cycle(replica_is_mariadb: bool) {
    let c = Cycle::new(replica_is_mariadb);
    let first = c.run();
    assert_eq!(discrepancies(&first), 10, "{first}");
    let before = c.dump();

    // Dry run: the statements and counts, and not one row changed.
    let out = c.apply(&["--dry-run", "--format", "text"]);
    assert!(out.status.success(), "{}", describe(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("dry run: nothing written"), "{printed}");
    assert!(
        printed.contains("-- users: 2 update correction(s), 2 row(s) would be touched, 0 stale"),
        "{printed}"
    );
    assert_eq!(c.dump(), before);

    let out = c.apply(&[]);
    assert!(out.status.success(), "{}", describe(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(total(&s, "applied"), 10, "{s}");
    assert_eq!(count(&s, "tenants", "insert", "applied"), 1);
    assert_eq!(count(&s, "memberships", "delete", "applied"), 1);
    let after = c.dump();

    // A second apply of the same run changes nothing.
    let out = c.apply(&[]);
    assert!(out.status.success(), "{}", describe(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(total(&s, "already_applied"), 10, "{s}");
    assert_eq!(total(&s, "applied"), 0, "{s}");
    assert_eq!(c.dump(), after);

    // Export and diff again: nothing left.
    let second = c.run();
    assert_eq!(discrepancies(&second), 0, "{second}");
    assert!(c.path().join("out/applies").exists());

    // The first run's corrections were also written as events, one line each.
    let events: Vec<serde_json::Value> = crate::common::files_below(&c.path().join("out/events"))
        .iter()
        .filter(|p| {
            p.to_string_lossy()
                .contains(&format!("run_id={}", first["run_id"].as_str().unwrap()))
        })
        .flat_map(|p| {
            std::fs::read_to_string(c.path().join("out/events").join(p))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(events.len(), 10);
    let email = events
        .iter()
        .find(|e| e["data"]["set"]["email"] == "b@acme.io")
        .expect("the email update event");
    assert_eq!(email["type"], "recon.correction.update");
    assert_eq!(email["source"], "recon/cycle");
    assert_eq!(email["subject"], r#"users/{"tenant_id":1,"user_id":"u2"}"#);
    assert_eq!(email["data"]["expected"]["email"], "old@acme.io");
    assert_eq!(
        email["data"]["key"],
        serde_json::json!({"tenant_id": 1, "user_id": "u2"})
    );

    // The next night the old email is back (the fix did not stick): the run says so.
    (c.replica)("UPDATE users SET email = 'old@acme.io' WHERE tenant_id = 1 AND user_id = 'u2';");
    let out = c.recon(&[
        "run",
        "--job",
        "job.toml",
        "--run-date",
        "2024-06-02",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let next: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let users = next["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entity"] == "users")
        .unwrap();
    assert_eq!(
        users["reappeared"].as_array().map(Vec::len),
        Some(1),
        "{next}"
    );
    assert_eq!(users["reappeared"][0]["correction_id"], email["id"]);
    assert_eq!(users["reappeared"][0]["applied_in_run"], first["run_id"]);
}

#[test]
fn full_cycle_into_mariadb_ends_with_zero_discrepancies() {
    full_cycle(true);
}

#[test]
fn full_cycle_into_postgres_ends_with_zero_discrepancies() {
    full_cycle(false);
}

fn stale_and_resume(replica_is_mariadb: bool) {
    let c = Cycle::new(replica_is_mariadb);
    c.run();
    // Replication keeps going after the snapshot: two rows the corrections target change.
    (c.replica)(
        "UPDATE users SET email = 'newer@acme.io' WHERE tenant_id = 1 AND user_id = 'u2';
                 UPDATE tenants SET name = 'zed2' WHERE tenant_id = 9;",
    );
    // And one membership update will fail on a constraint the apply does not expect.
    (c.replica)(
        "ALTER TABLE memberships ADD CONSTRAINT no_member CHECK (role <> 'member' OR tenant_id = 9);",
    );
    let out = c.apply(&["--batch-rows", "2"]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(count(&s, "users", "update", "stale"), 1, "{s}");
    assert_eq!(count(&s, "tenants", "delete", "stale"), 1, "{s}");
    assert_eq!(count(&s, "memberships", "update", "failed"), 1, "{s}");
    // The insert of membership (3,u1,staff,member) fails on the same check.
    assert_eq!(count(&s, "memberships", "insert", "failed"), 1, "{s}");
    assert_eq!(total(&s, "applied"), 6, "{s}");
    let dump = c.dump();
    assert!(
        dump.contains("newer@acme.io"),
        "the newer value stays:\n{dump}"
    );
    assert!(
        dump.contains("zed2"),
        "the changed extra tenant stays:\n{dump}"
    );

    // Fixed, the rerun applies only what failed; stale ones stay stale (ledger).
    (c.replica)("ALTER TABLE memberships DROP CONSTRAINT no_member;");
    let out = c.apply(&[]);
    assert!(
        out.status.success() || out.status.code() == Some(7),
        "{}",
        describe(&out)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(total(&s, "applied"), 2, "{s}");
    assert_eq!(total(&s, "already_applied"), 8, "{s}");
    let dump = c.dump();
    assert!(dump.contains("newer@acme.io"), "{dump}");
}

#[test]
fn stale_rows_are_skipped_and_a_rerun_finishes_the_rest_mariadb() {
    stale_and_resume(true);
}

#[test]
fn stale_rows_are_skipped_and_a_rerun_finishes_the_rest_postgres() {
    stale_and_resume(false);
}

/// 3000 updates in batches of 10, the apply killed with SIGKILL part way: every batch is
/// all or nothing (changed rows equal ledger rows), and the rerun finishes the rest.
/// The entity declares a version column, so guards check `rev` alone.
#[test]
fn an_apply_killed_part_way_resumes_on_rerun() {
    const N: u32 = 3000;
    let pg = Pg::create("kill");
    let my = My::create("kill");
    pg.exec(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, val varchar(8), rev int);
         INSERT INTO items SELECT i, 'new', 1 FROM generate_series(1, {N}) AS s(i);"
    ));
    my.exec(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, val varchar(8), rev int);
         SET SESSION max_recursive_iterations = 100000;
         INSERT INTO items WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {N}) SELECT i, 'old', 1 FROM s;"
    ));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.toml"),
        "[job]\nname = \"kill\"\nlake = \"lake\"\noutput = \"out\"\n[systems]\nsource = \"monolith\"\nreplica = \"service\"\n[guardrails]\nmax_correction_share = 1.0\n[exporters.monolith]\nkind = \"postgres\"\nurl_env = \"SRC_URL\"\n[exporters.service]\nkind = \"mysql\"\nurl_env = \"DST_URL\"\n[[entities]]\nname = \"items\"\nkey = [\"id\"]\nversion = \"rev\"\n",
    )
    .unwrap();
    let recon = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_recon"));
        cmd.current_dir(dir.path())
            .args(args)
            .env("SRC_URL", pg.url())
            .env("DST_URL", my.url());
        cmd
    };
    let out = recon(&["run", "--job", "job.toml", "--run-date", DATE])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    // A writer bumps one row's version after the snapshot: that one is stale.
    my.exec("UPDATE items SET rev = 2 WHERE id = 7;");

    let apply = [
        "apply",
        "--job",
        "job.toml",
        "--run-date",
        DATE,
        "--system",
        "service",
        "--batch-rows",
        "10",
        "--format",
        "json",
    ];
    let mut child = recon(&apply)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ledger = || -> u32 {
        my.exec("SELECT count(*) FROM recon_applied;")
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let started = std::time::Instant::now();
    loop {
        let n = if my
            .exec("SHOW TABLES LIKE 'recon_applied';")
            .trim()
            .is_empty()
        {
            0
        } else {
            ledger()
        };
        if n >= 200 || started.elapsed() > std::time::Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = ledger();
    assert!(
        done > 0 && done < N,
        "killed part way ({done} of {N} in the ledger)"
    );
    assert_eq!(done % 10, 0, "batches are all or nothing");
    let changed: u32 = my
        .exec("SELECT count(*) FROM items WHERE val = 'new';")
        .trim()
        .parse()
        .unwrap();
    let stale_seen = u32::from(
        done >= 10
            && my
                .exec("SELECT count(*) FROM recon_applied WHERE outcome = 'stale';")
                .trim()
                == "1",
    );
    assert_eq!(
        changed + stale_seen,
        done,
        "every ledger row matches its change"
    );

    let out = recon(&apply).output().unwrap();
    // The stale row (id 7, first batch) was recorded before the kill: the rerun has
    // nothing stale left to report, unless the kill came before that batch committed.
    let expected_exit = if stale_seen == 1 { 0 } else { 7 };
    assert_eq!(out.status.code(), Some(expected_exit), "{}", describe(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(total(&s, "already_applied") as u32, done, "{s}");
    assert_eq!(
        (total(&s, "applied") + total(&s, "stale") + total(&s, "already_applied")) as u32,
        N,
        "{s}"
    );
    assert_eq!(
        my.exec("SELECT count(*) FROM items WHERE val = 'new';")
            .trim(),
        (N - 1).to_string()
    );
    assert_eq!(
        my.exec("SELECT val, rev FROM items WHERE id = 7;").trim(),
        "old\t2"
    );
}

/// A run whose guardrail tripped is not applied unless the flag says so; even then its
/// withheld entities have no corrections to apply.
#[test]
fn a_guardrail_tripped_run_is_refused_unless_allowed() {
    let c = Cycle::new(true);
    let job = std::fs::read_to_string(c.path().join("job.toml"))
        .unwrap()
        .replace("max_correction_share = 1.0", "max_correction_share = 1.0\n")
        .replace(
            "depends_on = [\"tenants\"]",
            "depends_on = [\"tenants\"]\nmax_correction_share = 0.1",
        );
    std::fs::write(c.path().join("job.toml"), job).unwrap();
    let out = c.recon(&["run", "--job", "job.toml", "--run-date", DATE]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let before = c.dump();
    let out = c.apply(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        describe(&out).contains("tripped a guardrail (withheld: users)"),
        "{}",
        describe(&out)
    );
    assert_eq!(c.dump(), before);

    // Forced: the other entities are applied; what depends on the withheld users fails
    // on the foreign keys (rolled back alone) and is reported, exit 7.
    let out = c.apply(&["--allow-guardrail-tripped"]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        s["counts"].get("users").is_none(),
        "users were withheld: {s}"
    );
    assert_eq!(count(&s, "tenants", "update", "applied"), 1, "{s}");
    assert_eq!(count(&s, "memberships", "insert", "failed"), 1, "{s}");
    assert_eq!(count(&s, "tenants", "delete", "failed"), 1, "{s}");
}

/// Apply never runs unguarded or half-checked: a `version` the corrections do not carry
/// (a typo made after the run) and a column the target table lacks are refused before
/// one row is written, naming the entity and column.
fn refuses_unguarded_and_missing_columns(replica_is_mariadb: bool) {
    let c = Cycle::new(replica_is_mariadb);
    c.run();
    let before = c.dump();
    let job_path = c.path().join("job.toml");
    let job = std::fs::read_to_string(&job_path).unwrap();
    std::fs::write(
        &job_path,
        job.replace(
            "key = [\"tenant_id\"]\n",
            "key = [\"tenant_id\"]\nversion = \"revision\"\n",
        ),
    )
    .unwrap();
    let out = c.apply(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("entity `tenants`: the job's version column `revision` is not in correction"),
        "{stderr}"
    );
    assert_eq!(c.dump(), before, "nothing written");

    std::fs::write(&job_path, &job).unwrap();
    let all_tenants = "SELECT tenant_id, name, plan FROM tenants ORDER BY 1;";
    let tenants_before = (c.replica)(all_tenants);
    (c.replica)("ALTER TABLE users DROP COLUMN seen_at;");
    let out = c.apply(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("entity `users`: table users in the service database has no column of the corrections `seen_at`"),
        "{stderr}"
    );
    assert_eq!((c.replica)(all_tenants), tenants_before, "nothing written");
}

#[test]
fn apply_refuses_to_run_unguarded_or_against_missing_columns_mariadb() {
    refuses_unguarded_and_missing_columns(true);
}

#[test]
fn apply_refuses_to_run_unguarded_or_against_missing_columns_postgres() {
    refuses_unguarded_and_missing_columns(false);
}
