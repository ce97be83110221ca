//! The export stage against the machine's PostgreSQL and MariaDB: type mapping column
//! by column, one consistent snapshot per system, commit discipline, and the whole
//! night (export, then diff) on the sample's planted drift.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use crate::db::{Dialect, My, Pg, table_from_parquet};

const RUN_DATE: &str = "2024-06-01";

fn recon(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recon"));
    cmd.current_dir(dir).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn snapshot_dir(dir: &Path, system: &str, entity: &str) -> PathBuf {
    dir.join(format!(
        "lake/snapshots/{system}/{entity}/run_date={RUN_DATE}"
    ))
}

/// The Parquet parts in a snapshot folder.
fn parts(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    v.sort();
    v
}

fn manifest(dir: &Path) -> Option<serde_json::Value> {
    std::fs::read(dir.join("_manifest.json"))
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap())
}

/// Schema and rows of the one exported part, as a table.
fn exported(dir: &Path) -> String {
    schema_and_rows(&snapshot_part(dir))
}

fn single_job(dir: &Path, kind: &str, env: &str, entities: &str) {
    std::fs::write(
        dir.join("job.toml"),
        format!(
            "[job]\nname = \"t\"\nlake = \"lake\"\n[systems]\nsource = \"db\"\nreplica = \"other\"\n[exporters.db]\nkind = \"{kind}\"\nurl_env = \"{env}\"\n{entities}"
        ),
    )
    .unwrap();
}

const EXPORT_DB: [&str; 7] = [
    "export",
    "--job",
    "job.toml",
    "--run-date",
    RUN_DATE,
    "--system",
    "db",
];

#[test]
fn postgres_types_map_to_arrow_faithfully() {
    let pg = Pg::create("types");
    pg.exec(
        "CREATE TYPE mood AS ENUM ('ok', 'sad');
         CREATE TABLE types (
           id int8, i2 int2, i4 int4, amount numeric(12,2), big numeric(38,10), f4 float4,
           f8 float8, flag bool, name text, code varchar(8), fixed char(3), uid uuid,
           doc json, docb jsonb, day date, at_time time, at timestamp, at_tz timestamptz,
           bin bytea, m mood);
         INSERT INTO types VALUES (
           1, -32768, 2147483647, -12345.67, 1234567890123456789012345678.0123456789, 1.5,
           0.1, true, 'zoë ''q''', 'ab', 'x', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
           '{\"a\": [1, 2]}', '{\"b\": null}', '2024-02-29', '13:45:01.5',
           '2024-06-01 10:00:00.123456', '2024-06-01 12:00:00+02', '\\xdeadbeef', 'sad');
         INSERT INTO types (id) VALUES (2);",
    );
    let dir = tempfile::tempdir().unwrap();
    single_job(
        dir.path(),
        "postgres",
        "RECON_IT_PG",
        "[[entities]]\nname = \"types\"\nkey = [\"id\"]\n",
    );
    let out = recon(dir.path(), &EXPORT_DB, &[("RECON_IT_PG", pg.url())]);
    assert!(out.status.success(), "{}", describe(&out));
    let snap = snapshot_dir(dir.path(), "db", "types");
    insta::assert_snapshot!(exported(&snap));
    let m = manifest(&snap).expect("a manifest");
    assert_eq!(m["rows"], 2);
    assert_eq!(m["exporter"], "postgres");
    assert_eq!(m["source"], "table types");
    assert!(m["watermark"]["postgres_xmin"].is_string(), "{m}");
    assert_eq!(m["schema"][3]["data_type"], "Decimal128(12, 2)");
}

#[test]
fn mariadb_types_map_to_arrow_faithfully() {
    let my = My::create("types");
    my.exec(
        "CREATE TABLE types (
           id bigint, t tinyint, flag tinyint(1), s smallint, su smallint unsigned, m mediumint,
           i int, iu int unsigned, b bigint, bu bigint unsigned, amount decimal(12,2),
           neg decimal(5,0), pos decimal(7,3) unsigned, f float, d double, name varchar(20),
           fixed char(3), body text, doc json, e enum('ok','sad'), day date, at_time time(3),
           at datetime(6), at_tz timestamp(6) NULL DEFAULT NULL, bin varbinary(8), blb blob, y year);
         INSERT INTO types VALUES (
           1, -128, 1, -32768, 65535, -8388608, -2147483648, 4294967295, -9223372036854775808,
           18446744073709551615, -12345.67, -99999, 1234.567, 1.5, 0.30000000000000004,
           'zoë ''q''', 'x', 'long text', '{\"a\": [1, 2]}', 'sad', '2024-02-29', '13:45:01.5',
           '2024-06-01 10:00:00.123456', '2024-06-01 10:00:00', X'DEADBEEF', X'00FF', 2024);
         INSERT INTO types (id) VALUES (2);",
    );
    let dir = tempfile::tempdir().unwrap();
    single_job(
        dir.path(),
        "mysql",
        "RECON_IT_MY",
        "[[entities]]\nname = \"types\"\nkey = [\"id\"]\n",
    );
    let out = recon(dir.path(), &EXPORT_DB, &[("RECON_IT_MY", my.url())]);
    assert!(out.status.success(), "{}", describe(&out));
    let snap = snapshot_dir(dir.path(), "db", "types");
    insta::assert_snapshot!(exported(&snap));
    let m = manifest(&snap).expect("a manifest");
    assert_eq!(m["rows"], 2);
    assert!(m["watermark"]["snapshot_time"].is_string(), "{m}");
}

#[test]
fn unsupported_types_are_errors_naming_table_and_column() {
    let pg = Pg::create("odd");
    pg.exec(
        "CREATE TABLE ok (id int8); INSERT INTO ok VALUES (1);
         CREATE TABLE odd (id int8, span interval); INSERT INTO odd VALUES (1, '1 day');
         CREATE TABLE loose (id int8, amount numeric); INSERT INTO loose VALUES (1, 1.5);",
    );
    let dir = tempfile::tempdir().unwrap();
    let entities = "[[entities]]\nname = \"ok\"\nkey = [\"id\"]\n[[entities]]\nname = \"odd\"\nkey = [\"id\"]\n";
    single_job(dir.path(), "postgres", "RECON_IT_PG", entities);
    let out = recon(dir.path(), &EXPORT_DB, &[("RECON_IT_PG", pg.url())]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "entity `odd` from db: table odd, column `span`: type interval is not supported"
        ),
        "{err}"
    );
    // Nothing of the failed export looks complete, nor stays behind.
    for e in ["ok", "odd"] {
        let snap = snapshot_dir(dir.path(), "db", e);
        assert!(manifest(&snap).is_none() && parts(&snap).is_empty(), "{e}");
    }

    let entities = "[[entities]]\nname = \"loose\"\nkey = [\"id\"]\n";
    single_job(dir.path(), "postgres", "RECON_IT_PG", entities);
    let out = recon(dir.path(), &EXPORT_DB, &[("RECON_IT_PG", pg.url())]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(
        describe(&out)
            .contains("column `amount`: type numeric has no declared precision and scale"),
        "{}",
        describe(&out)
    );

    let my = My::create("odd");
    my.exec("CREATE TABLE odd (id bigint, p point); INSERT INTO odd VALUES (1, POINT(1, 2));");
    single_job(
        dir.path(),
        "mysql",
        "RECON_IT_MY",
        "[[entities]]\nname = \"odd\"\nkey = [\"id\"]\n",
    );
    let out = recon(dir.path(), &EXPORT_DB, &[("RECON_IT_MY", my.url())]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(
        describe(&out).contains("table odd, column `p`: type MYSQL_TYPE_GEOMETRY is not supported"),
        "{}",
        describe(&out)
    );

    // A missing URL variable is a usage error before anything is read.
    let out = recon(dir.path(), &EXPORT_DB, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(describe(&out).contains("RECON_IT_MY"), "{}", describe(&out));
}

#[test]
fn a_failed_export_keeps_the_previous_snapshot() {
    let pg = Pg::create("keep");
    pg.exec("CREATE TABLE a (id int8); INSERT INTO a VALUES (1), (2); CREATE TABLE b (id int8); INSERT INTO b VALUES (1);");
    let dir = tempfile::tempdir().unwrap();
    let entities =
        "[[entities]]\nname = \"a\"\nkey = [\"id\"]\n[[entities]]\nname = \"b\"\nkey = [\"id\"]\n";
    single_job(dir.path(), "postgres", "RECON_IT_PG", entities);
    let env = [("RECON_IT_PG", pg.url())];
    let out = recon(dir.path(), &EXPORT_DB, &env);
    assert!(out.status.success(), "{}", describe(&out));
    let a = snapshot_dir(dir.path(), "db", "a");
    let first = manifest(&a).unwrap();
    let first_parts = parts(&a);

    // Second export: `a` is read, then `b` fails.
    pg.exec("INSERT INTO a VALUES (3); ALTER TABLE b ADD COLUMN span interval;");
    let out = recon(dir.path(), &EXPORT_DB, &env);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert_eq!(manifest(&a).unwrap()["export_id"], first["export_id"]);
    assert_eq!(parts(&a), first_parts, "the new part of `a` was removed");

    // Fixed: the next export replaces the snapshot and removes the old part.
    pg.exec("ALTER TABLE b DROP COLUMN span;");
    let out = recon(dir.path(), &EXPORT_DB, &env);
    assert!(out.status.success(), "{}", describe(&out));
    let third = manifest(&a).unwrap();
    assert_ne!(third["export_id"], first["export_id"]);
    assert_eq!(third["rows"], 3);
    assert_eq!(parts(&a).len(), 1);
    assert_ne!(parts(&a), first_parts);
}

/// Entity `a` is read slowly; while it is, another session commits a row to `b`. The
/// export of `b` must not see it: both come from one database snapshot.
fn consistent_snapshot(kind: &str, env_name: &str, url: String, exec: &dyn Fn(&str), slow_a: &str) {
    let dir = tempfile::tempdir().unwrap();
    let entities = format!(
        "[[entities]]\nname = \"a\"\nkey = [\"id\"]\nexport.db = {{ query = \"{slow_a}\" }}\n[[entities]]\nname = \"b\"\nkey = [\"id\"]\n"
    );
    single_job(dir.path(), kind, env_name, &entities);
    let path = dir.path().to_path_buf();
    let env = [(env_name.to_string(), url)];
    let export = std::thread::spawn(move || {
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        recon(&path, &EXPORT_DB, &env)
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    exec("INSERT INTO b VALUES (2);");
    let out = export.join().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let b = manifest(&snapshot_dir(dir.path(), "db", "b")).unwrap();
    assert_eq!(
        b["rows"], 1,
        "b was read from the snapshot taken before the insert"
    );
}

#[test]
fn postgres_entities_come_from_one_snapshot() {
    let pg = Pg::create("snap");
    pg.exec("CREATE TABLE a (id int8); INSERT INTO a VALUES (1); CREATE TABLE b (id int8); INSERT INTO b VALUES (1);");
    consistent_snapshot(
        "postgres",
        "RECON_IT_PG",
        pg.url(),
        &|sql| {
            pg.exec(sql);
        },
        "SELECT a.id FROM a, LATERAL (SELECT pg_sleep(4)) s",
    );
}

#[test]
fn mariadb_entities_come_from_one_snapshot() {
    let my = My::create("snap");
    my.exec("CREATE TABLE a (id bigint) ENGINE=InnoDB; INSERT INTO a VALUES (1); CREATE TABLE b (id bigint) ENGINE=InnoDB; INSERT INTO b VALUES (1);");
    consistent_snapshot(
        "mysql",
        "RECON_IT_MY",
        my.url(),
        &|sql| {
            my.exec(sql);
        },
        "SELECT id FROM a WHERE SLEEP(4) = 0",
    );
}

/// The sample's tables loaded into a Postgres "monolith" and a MariaDB "service", then
/// `recon run` exports both and diffs: exactly the planted discrepancies.
#[test]
fn export_then_diff_finds_exactly_the_planted_drift() {
    let pg = Pg::create("monolith");
    let my = My::create("service");
    let lake = repo().join("sample-data/lake/snapshots");
    for entity in ["tenants", "users", "groups", "memberships"] {
        let file = |system: &str| {
            lake.join(format!(
                "{system}/{entity}/run_date={RUN_DATE}/part-00000.parquet"
            ))
        };
        pg.exec(&table_from_parquet(
            Dialect::Postgres,
            entity,
            &file("monolith"),
        ));
        my.exec(&table_from_parquet(
            Dialect::MariaDb,
            entity,
            &file("service"),
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let job = std::fs::read_to_string(repo().join("jobs/identity.toml"))
        .unwrap()
        .replace("lake = \"../sample-data/lake\"", "lake = \"lake\"")
        .replace("output = \"../recon-output/identity\"", "output = \"out\"")
        .replacen(
            "[[entities]]",
            "[exporters.monolith]\nkind = \"postgres\"\nurl_env = \"MONOLITH_DATABASE_URL\"\n\n[exporters.service]\nkind = \"mysql\"\nurl_env = \"SERVICE_DATABASE_URL\"\n\n[[entities]]",
            1,
        );
    std::fs::write(dir.path().join("job.toml"), job).unwrap();
    let out = recon(
        dir.path(),
        &RUN_SAMPLE,
        &[
            ("MONOLITH_DATABASE_URL", pg.url()),
            ("SERVICE_DATABASE_URL", my.url()),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let m = manifests(&dir.path().join("out"));
    assert_eq!(m.len(), 1);
    // The summary says how to apply each system's corrections.
    let shown = String::from_utf8_lossy(&out.stdout);
    for system in ["monolith", "service"] {
        let apply = format!(
            "next:     apply    recon apply --job job.toml --run-date 2024-06-01 --run {} --system {system} --dry-run",
            m[0].run_id
        );
        assert!(shown.contains(&apply), "no `{apply}` in:\n{shown}");
    }
    let found = discrepancies(&dir.path().join("out"), &m[0]);
    let expected = crate::sample::planted();
    let missed: Vec<_> = expected.difference(&found).collect();
    let extra: Vec<_> = found.difference(&expected).collect();
    assert!(
        missed.is_empty() && extra.is_empty(),
        "missed: {missed:#?}\nextra: {extra:#?}"
    );
    for system in ["monolith", "service"] {
        for entity in ["tenants", "users", "groups", "memberships"] {
            let snap = snapshot_dir(dir.path(), system, entity);
            let man = manifest(&snap).unwrap_or_else(|| panic!("{system}/{entity} manifest"));
            assert_eq!(man["files"].as_array().unwrap().len(), 1);
        }
    }
    // The run's summary records the export.
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            dir.path().join("out").join(
                m[0].files
                    .iter()
                    .find(|f| f.kind == "summary")
                    .unwrap()
                    .path
                    .as_str(),
            ),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        summary["export"]["systems"].as_array().unwrap().len(),
        2,
        "{summary}"
    );
}
