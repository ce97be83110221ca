//! TLS to private database servers the tests start themselves: PostgreSQL 15 (`initdb`
//! and `pg_ctl` as the `postgres` user) and MariaDB (`mariadb-install-db` and
//! `mariadbd`), each on a temp folder and a free port, with a CA, a server certificate
//! for `localhost` only (so that 127.0.0.1 is a name mismatch), a second CA and a client
//! certificate made with the openssl CLI. Every mode is checked, through `recon export`
//! and through the connect functions; a guard stops each server, also when a test fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use recon::{Error, ExitCode};

use crate::common::describe;

/// A password in every URL: it must never show in an error or a log line.
const SECRET: &str = "hunter2-not-for-logs";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const RUN_DATE: &str = "2024-06-01";

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start it ({e}); the TLS tests need it"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Gives `path` (and what is below it) to an OS user, for a server that runs as one.
fn chown(user: &str, path: &Path) {
    run(
        Command::new("chown")
            .args(["-R", &format!("{user}:{user}")])
            .arg(path),
        "chown",
    );
}

/// A CA, a second CA, a server certificate for DNS name `localhost` only, and a client
/// certificate (CN `certuser`), all signed by the first CA.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            run(
                Command::new("openssl").current_dir(dir).args(args),
                "openssl",
            )
        };
        for (name, subject) in [("ca", "/CN=recon test CA"), ("other-ca", "/CN=another CA")] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                "3",
                "-subj",
                subject,
            ]);
        }
        for (name, subject, ext) in [
            (
                "server",
                "/CN=localhost",
                "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
            ),
            (
                "client",
                "/CN=certuser",
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
            ),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                subject,
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "3",
                "-extfile",
                &format!("{name}.ext"),
            ]);
        }
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A private PostgreSQL 15 server on a temp folder; stopped when dropped.
struct PgServer {
    root: tempfile::TempDir,
    port: u16,
    certs: Certs,
}

impl PgServer {
    /// With `ssl = on` (the server certificate, the CA for client certificates, and
    /// `certuser` allowed only over TLS with a client certificate), or plain only.
    fn start(ssl: bool) -> PgServer {
        let root = tempfile::tempdir().unwrap();
        let certs = Certs::make(&root.path().join("certs"));
        let server = PgServer {
            port: free_port(),
            certs,
            root,
        };
        let dir = server.root.path();
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::create_dir(server.data()).unwrap();
        chown("postgres", dir);
        let key = server.certs.dir.join("server.key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        run(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(format!("{PG_BIN}/initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(server.data()),
            "initdb",
        );
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off\nssl = {}\n",
            server.port,
            dir.display(),
            if ssl { "on" } else { "off" }
        );
        if ssl {
            conf.push_str(&format!(
                "ssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
                server.certs.file("server.crt"),
                server.certs.file("server.key"),
                server.certs.file("ca.crt"),
            ));
            let hba = server.data().join("pg_hba.conf");
            let rest = std::fs::read_to_string(&hba).unwrap();
            std::fs::write(
                &hba,
                format!(
                    "hostssl all certuser 127.0.0.1/32 trust clientcert=verify-ca\nhostnossl all certuser 127.0.0.1/32 reject\n{rest}"
                ),
            )
            .unwrap();
        }
        let pg_conf = server.data().join("postgresql.conf");
        let mut all = std::fs::read_to_string(&pg_conf).unwrap();
        all.push_str(&conf);
        std::fs::write(&pg_conf, all).unwrap();
        run(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(format!("{PG_BIN}/pg_ctl"))
                .arg("-D")
                .arg(server.data())
                .arg("-l")
                .arg(dir.join("log"))
                .args(["-w", "start"]),
            "pg_ctl start",
        );
        server.psql(
            "CREATE ROLE certuser LOGIN; CREATE TABLE t (id int8 PRIMARY KEY, name text);
             INSERT INTO t VALUES (1, 'one'), (2, 'two'); GRANT SELECT ON t TO certuser;",
        );
        server
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// Runs SQL over the Unix socket.
    fn psql(&self, sql: &str) -> String {
        run(
            Command::new("psql")
                .arg("-h")
                .arg(self.root.path())
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .args(["-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-c", sql]),
            "psql",
        )
    }

    fn url(&self, user: &str, host: &str, params: &str) -> String {
        format!(
            "postgres://{user}:{SECRET}@{host}:{}/postgres?{params}",
            self.port
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A job exporting table `t` of system `db` through the URL in `RECON_IT_TLS_URL`.
fn export(dir: &Path, kind: &str, url: &str) -> Output {
    std::fs::write(
        dir.join("job.toml"),
        format!(
            "[job]\nname = \"t\"\nlake = \"lake\"\n[systems]\nsource = \"db\"\nreplica = \"other\"\n[exporters.db]\nkind = \"{kind}\"\nurl_env = \"RECON_IT_TLS_URL\"\n[[entities]]\nname = \"t\"\nkey = [\"id\"]\n"
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_recon"))
        .current_dir(dir)
        .args([
            "--log-level",
            "debug",
            "export",
            "--job",
            "job.toml",
            "--run-date",
            RUN_DATE,
        ])
        .args(["--system", "db"])
        .env("RECON_IT_TLS_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn exported_rows(dir: &Path) -> serde_json::Value {
    let m = dir.join(format!(
        "lake/snapshots/db/t/run_date={RUN_DATE}/_manifest.json"
    ));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    m["rows"].clone()
}

/// An export that fails with `code`, naming what `needles` say, and not the password.
fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let all = describe(out);
    assert_eq!(out.status.code(), Some(code), "{all}");
    for n in needles {
        assert!(all.contains(n), "`{n}` not in:\n{all}");
    }
    assert!(!all.contains(SECRET), "the password leaked:\n{all}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Connects with recon's connect function; returns whether the session is encrypted.
fn pg_connect(url: &str) -> Result<bool, Error> {
    runtime().block_on(async {
        let (client, conn) = recon::db::postgres::connect("db", url).await?;
        let row = client
            .query_one(
                "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                &[],
            )
            .await
            .unwrap();
        drop(client);
        let _ = conn.await;
        Ok(row.get::<_, bool>(0))
    })
}

/// The error's text, checked to be a TLS mistake (exit 2) without the password.
fn tls_error(r: Result<bool, Error>, needles: &[&str]) -> String {
    let e = r.expect_err("the connection should fail");
    let text = e.to_string();
    assert!(matches!(e, Error::Tls { .. }), "not a TLS error: {e:?}");
    assert_eq!(e.exit_code(), ExitCode::Usage, "{text}");
    for n in needles {
        assert!(text.contains(n), "`{n}` not in: {text}");
    }
    assert!(!text.contains(SECRET), "the password leaked: {text}");
    text
}

#[test]
fn postgres_tls_modes_against_a_server_with_tls() {
    let pg = PgServer::start(true);
    let ca = pg.certs.file("ca.crt");
    let other = pg.certs.file("other-ca.crt");
    let port = pg.port;

    // Through `recon export`: require, verify-full, and verify-full with the wrong CA.
    let dir = tempfile::tempdir().unwrap();
    let out = export(
        dir.path(),
        "postgres",
        &pg.url("postgres", "127.0.0.1", "sslmode=require"),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!describe(&out).contains(SECRET), "{}", describe(&out));
    assert_eq!(exported_rows(dir.path()), 2);

    let dir = tempfile::tempdir().unwrap();
    let url = pg.url(
        "postgres",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}&application_name=recon"),
    );
    let out = export(dir.path(), "postgres", &url);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        describe(&out).contains("sslmode=verify-full"),
        "the debug log says how it connected: {}",
        describe(&out)
    );
    assert_eq!(exported_rows(dir.path()), 2);

    let url = pg.url(
        "postgres",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other}"),
    );
    let out = export(dir.path(), "postgres", &url);
    assert_fails(
        &out,
        2,
        &[
            &format!("system `db`: TLS to localhost:{port}"),
            "the server's certificate does not verify (sslmode=verify-full): it is not signed by a trusted CA",
            &format!("sslrootcert={other}"),
        ],
    );

    // A CA file that is not there is a configuration mistake too, found before connecting.
    let out = export(
        dir.path(),
        "postgres",
        &pg.url(
            "postgres",
            "localhost",
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        ),
    );
    assert_fails(
        &out,
        2,
        &["sslrootcert=/nonexistent/ca.pem: cannot read it"],
    );

    // The connect function, mode by mode.
    assert!(
        pg_connect(&pg.url(
            "postgres",
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}")
        ))
        .unwrap()
    );
    tls_error(
        pg_connect(&pg.url(
            "postgres",
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        )),
        &[
            &format!("TLS to 127.0.0.1:{port}"),
            "certificate not valid for name \"127.0.0.1\"",
            "localhost",
        ],
    );
    // verify-ca checks the chain, not the name.
    assert!(
        pg_connect(&pg.url(
            "postgres",
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={ca}")
        ))
        .unwrap()
    );
    tls_error(
        pg_connect(&pg.url(
            "postgres",
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={other}"),
        )),
        &["not signed by a trusted CA"],
    );
    // require verifies nothing, unless given a CA file: then the chain, as libpq does.
    assert!(pg_connect(&pg.url("postgres", "127.0.0.1", "sslmode=require")).unwrap());
    tls_error(
        pg_connect(&pg.url(
            "postgres",
            "127.0.0.1",
            &format!("sslmode=require&sslrootcert={other}"),
        )),
        &["not signed by a trusted CA"],
    );
    // prefer (also the default) takes TLS when offered; disable does not.
    assert!(pg_connect(&pg.url("postgres", "127.0.0.1", "sslmode=prefer")).unwrap());
    assert!(pg_connect(&pg.url("postgres", "127.0.0.1", "connect_timeout=10")).unwrap());
    assert!(!pg_connect(&pg.url("postgres", "127.0.0.1", "sslmode=disable")).unwrap());
    // libpq's key=value form.
    let kv = format!(
        "host=localhost port={port} user=postgres password={SECRET} dbname=postgres sslmode=verify-full sslrootcert='{ca}'"
    );
    assert!(pg_connect(&kv).unwrap());
    tls_error(
        pg_connect(&kv.replace("verify-full", "verify-fully")),
        &["sslmode=verify-fully is not one of"],
    );

    // A client certificate, required by pg_hba.conf for `certuser`.
    let cert = pg.certs.file("client.crt");
    let key = pg.certs.file("client.key");
    assert!(
        pg_connect(&pg.url(
            "certuser",
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}")
        ))
        .unwrap()
    );
    let e = pg_connect(&pg.url(
        "certuser",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .expect_err("no client certificate");
    assert!(e.to_string().contains("certificate"), "{e}");
    assert!(!e.to_string().contains(SECRET), "{e}");
    tls_error(
        pg_connect(&pg.url(
            "certuser",
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}&sslcert={cert}"),
        )),
        &["sslcert is given without sslkey"],
    );
    tls_error(
        pg_connect(&pg.url(
            "certuser",
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={ca}"),
        )),
        &[&format!("sslkey={ca}: no PEM private key")],
    );
}

#[test]
fn postgres_tls_modes_against_a_server_without_tls() {
    let pg = PgServer::start(false);
    let port = pg.port;
    let dir = tempfile::tempdir().unwrap();
    let out = export(
        dir.path(),
        "postgres",
        &pg.url("postgres", "127.0.0.1", "sslmode=require"),
    );
    assert_fails(
        &out,
        2,
        &[
            &format!("system `db`: TLS to 127.0.0.1:{port}"),
            "the server does not accept TLS connections, and sslmode=require requires TLS",
        ],
    );
    tls_error(
        pg_connect(&pg.url(
            "postgres",
            "localhost",
            &format!(
                "sslmode=verify-full&sslrootcert={}",
                pg.certs.file("ca.crt")
            ),
        )),
        &["does not accept TLS connections"],
    );
    // prefer falls back to plain TCP.
    assert!(!pg_connect(&pg.url("postgres", "127.0.0.1", "sslmode=prefer")).unwrap());
    let out = export(
        dir.path(),
        "postgres",
        &pg.url("postgres", "127.0.0.1", "sslmode=prefer"),
    );
    assert!(out.status.success(), "{}", describe(&out));
    // Nobody listening is still "unreachable": exit 5, without the password.
    drop(pg);
    let out = export(
        dir.path(),
        "postgres",
        &format!("postgres://postgres:{SECRET}@127.0.0.1:{port}/postgres?sslmode=require"),
    );
    assert_fails(&out, 5, &[&format!("PostgreSQL at 127.0.0.1:{port}")]);
}

/// A private MariaDB server on a temp folder; stopped (killed) when dropped.
struct MyServer {
    root: tempfile::TempDir,
    port: u16,
    certs: Certs,
    child: Option<Child>,
}

impl MyServer {
    fn install() -> MyServer {
        let root = tempfile::tempdir().unwrap();
        let certs = Certs::make(&root.path().join("certs"));
        let server = MyServer {
            port: free_port(),
            certs,
            root,
            child: None,
        };
        let dir = server.root.path();
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        chown("mysql", dir);
        run(
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", dir.join("data").display()))
                .args([
                    "--user=mysql",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ]),
            "mariadb-install-db",
        );
        server
    }

    fn sock(&self) -> PathBuf {
        self.root.path().join("sock")
    }

    /// Starts the server, with TLS or without.
    fn start(&mut self, tls: bool) {
        let dir = self.root.path();
        let _ = std::fs::remove_file(self.sock());
        let mut cmd = Command::new("mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", self.sock().display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--log-error={}", dir.join("err.log").display()))
            .args([
                "--user=mysql",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
            ])
            .args(["--innodb-buffer-pool-size=16M", "--skip-log-bin"]);
        if tls {
            cmd.arg(format!("--ssl-cert={}", self.certs.file("server.crt")))
                .arg(format!("--ssl-key={}", self.certs.file("server.key")))
                .arg(format!("--ssl-ca={}", self.certs.file("ca.crt")));
        }
        self.child = Some(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mariadbd: the TLS tests need it"),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.sock().exists() {
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start: {}",
                std::fs::read_to_string(dir.join("err.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn sql(&self, sql: &str) -> String {
        run(
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.sock().display()))
                .args(["-u", "root", "-N", "-B", "-e", sql]),
            "mariadb",
        )
    }

    fn url(&self, host: &str, params: &str) -> String {
        format!(
            "mysql://recon:{SECRET}@{host}:{}/tls_db?{params}",
            self.port
        )
    }
}

impl Drop for MyServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects with recon's connect function; returns the session's TLS version ("" for
/// none).
fn my_connect(url: &str) -> Result<String, Error> {
    use mysql_async::prelude::Queryable;
    runtime().block_on(async {
        let mut conn = recon::db::mysql::connect("db", url, |b| b).await?;
        let row: Option<(String, String)> = conn
            .query_first("SHOW STATUS LIKE 'Ssl_version'")
            .await
            .unwrap();
        let _ = conn.disconnect().await;
        Ok(row.map(|r| r.1).unwrap_or_default())
    })
}

fn my_tls_error(r: Result<String, Error>, needles: &[&str]) -> String {
    tls_error(r.map(|v| !v.is_empty()), needles)
}

#[test]
fn mariadb_tls_modes_against_a_private_server() {
    let mut my = MyServer::install();
    my.start(true);
    my.sql(&format!(
        "CREATE DATABASE tls_db; CREATE TABLE tls_db.t (id bigint PRIMARY KEY, name text);
         INSERT INTO tls_db.t VALUES (1, 'one'), (2, 'two');
         CREATE USER 'recon'@'%' IDENTIFIED BY '{SECRET}'; GRANT ALL ON tls_db.* TO 'recon'@'%';"
    ));
    let ca = my.certs.file("ca.crt");
    let other = my.certs.file("other-ca.crt");
    let port = my.port;

    // Through `recon export`: VERIFY_IDENTITY with the CA, and with the wrong CA.
    let dir = tempfile::tempdir().unwrap();
    let out = export(
        dir.path(),
        "mysql",
        &my.url(
            "localhost",
            &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
        ),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(exported_rows(dir.path()), 2);
    let out = export(
        dir.path(),
        "mysql",
        &my.url(
            "localhost",
            &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={other}"),
        ),
    );
    assert_fails(
        &out,
        2,
        &[
            &format!("system `db`: TLS to localhost:{port}"),
            "the server's certificate does not verify (ssl-mode=VERIFY_IDENTITY): it is not signed by a trusted CA",
        ],
    );

    // The connect function, mode by mode.
    assert!(
        my_connect(&my.url("127.0.0.1", "ssl-mode=REQUIRED"))
            .unwrap()
            .starts_with("TLS")
    );
    assert!(
        my_connect(&my.url(
            "localhost",
            &format!("ssl_mode=verify_identity&ssl_ca={ca}")
        ))
        .unwrap()
        .starts_with("TLS")
    );
    my_tls_error(
        my_connect(&my.url(
            "127.0.0.1",
            &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
        )),
        &["certificate not valid for name \"127.0.0.1\""],
    );
    // VERIFY_CA: the chain, not the name (also with a CA alone, as the mysql client).
    assert!(
        my_connect(&my.url("127.0.0.1", &format!("ssl-mode=VERIFY_CA&ssl-ca={ca}")))
            .unwrap()
            .starts_with("TLS")
    );
    assert!(
        my_connect(&my.url("127.0.0.1", &format!("ssl-ca={ca}")))
            .unwrap()
            .starts_with("TLS")
    );
    my_tls_error(
        my_connect(&my.url("127.0.0.1", &format!("ssl-mode=VERIFY_CA&ssl-ca={other}"))),
        &["not signed by a trusted CA"],
    );
    // REQUIRED with a CA verifies the chain, as with PostgreSQL.
    my_tls_error(
        my_connect(&my.url("127.0.0.1", &format!("ssl-mode=REQUIRED&ssl-ca={other}"))),
        &["not signed by a trusted CA"],
    );
    // mysql_async's own options mean the same.
    assert!(
        my_connect(&my.url("127.0.0.1", "require_ssl=true&verify_ca=false"))
            .unwrap()
            .starts_with("TLS")
    );
    assert!(
        my_connect(&my.url("127.0.0.1", "ssl-mode=PREFERRED&prefer_socket=false"))
            .unwrap()
            .starts_with("TLS")
    );
    assert_eq!(
        my_connect(&my.url("127.0.0.1", "prefer_socket=false")).unwrap(),
        ""
    );
    my_tls_error(
        my_connect(&my.url(
            "localhost",
            "ssl-mode=VERIFY_IDENTITY&ssl-ca=/nonexistent/ca.pem",
        )),
        &["ssl-ca=/nonexistent/ca.pem: cannot read it"],
    );
    my_tls_error(
        my_connect(&my.url("localhost", "ssl-mode=VERIFY")),
        &["ssl-mode=VERIFY is not one of"],
    );

    // The same server without TLS.
    my.stop();
    my.start(false);
    let out = export(
        dir.path(),
        "mysql",
        &my.url("127.0.0.1", "ssl-mode=REQUIRED"),
    );
    assert_fails(
        &out,
        2,
        &["the server does not accept TLS connections, and ssl-mode=REQUIRED requires TLS"],
    );
    assert_eq!(
        my_connect(&my.url("127.0.0.1", "ssl-mode=PREFERRED&prefer_socket=false")).unwrap(),
        ""
    );
    my_tls_error(
        my_connect(&my.url("127.0.0.1", &format!("ssl-mode=VERIFY_CA&ssl-ca={ca}"))),
        &["does not accept TLS connections"],
    );
    // Nobody listening: exit 5, without the password.
    my.stop();
    let out = export(
        dir.path(),
        "mysql",
        &my.url("127.0.0.1", "ssl-mode=REQUIRED"),
    );
    assert_fails(&out, 5, &[&format!("MySQL at 127.0.0.1:{port}")]);
}
