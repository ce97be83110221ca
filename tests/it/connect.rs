//! `recon validate --connect` against the machine's PostgreSQL and MariaDB: each
//! exporter's variable set, its server answering, and the exit code when one is not.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::describe;

/// A job whose source is exported from PostgreSQL and replica from MariaDB.
fn job(dir: &Path) {
    std::fs::write(
        dir.join("job.toml"),
        "[job]\nname = \"t\"\nlake = \"lake\"\n[systems]\nsource = \"crm\"\nreplica = \"shop\"\n\
         [exporters.crm]\nkind = \"postgres\"\nurl_env = \"RECON_IT_CRM_URL\"\n\
         [exporters.shop]\nkind = \"mysql\"\nurl_env = \"RECON_IT_SHOP_URL\"\n\
         [[entities]]\nname = \"users\"\nkey = [\"id\"]\nexport.crm = { table = \"users\" }\nexport.shop = { table = \"users\" }\n",
    )
    .unwrap();
}

fn validate(dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recon"));
    cmd.current_dir(dir)
        .args(["validate", "--job", "job.toml", "--connect"])
        .env_remove("RECON_IT_CRM_URL")
        .env_remove("RECON_IT_SHOP_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn both_databases_answer() {
    let dir = tempfile::tempdir().unwrap();
    job(dir.path());
    let out = validate(
        dir.path(),
        &[
            (
                "RECON_IT_CRM_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            ("RECON_IT_SHOP_URL", "mysql://root@127.0.0.1:3306/test"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("  crm (postgres): PostgreSQL 15") && shown.contains(" answered in "),
        "{shown}"
    );
    assert!(shown.contains("  shop (mysql): MySQL 10.11"), "{shown}");
}

#[test]
fn an_unset_variable_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    job(dir.path());
    let out = validate(
        dir.path(),
        &[("RECON_IT_SHOP_URL", "mysql://root@127.0.0.1:3306/test")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    // Each exporter is checked, whatever the others gave.
    assert!(
        shown.contains(
            "crm (postgres): FAILED: system `crm`: environment variable RECON_IT_CRM_URL"
        ),
        "{shown}"
    );
    assert!(shown.contains("shop (mysql): MySQL"), "{shown}");
}

#[test]
fn a_server_that_does_not_answer_is_retryable_and_keeps_the_password_out() {
    let dir = tempfile::tempdir().unwrap();
    job(dir.path());
    let port = free_port();
    let pg = format!("postgres://postgres:hunter2secret@127.0.0.1:{port}/postgres");
    let my = format!("mysql://root:hunter2secret@127.0.0.1:{port}/test");
    let out = validate(
        dir.path(),
        &[("RECON_IT_CRM_URL", &pg), ("RECON_IT_SHOP_URL", &my)],
    );
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("crm (postgres): FAILED") && shown.contains("shop (mysql): FAILED"),
        "{shown}"
    );
    assert!(
        !describe(&out).contains("hunter2secret"),
        "a password was printed:\n{}",
        describe(&out)
    );
}

#[test]
fn without_connect_nothing_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    job(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_recon"))
        .current_dir(dir.path())
        .args(["validate", "--job", "job.toml"])
        .env_remove("RECON_IT_CRM_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("connections not checked"));
}
