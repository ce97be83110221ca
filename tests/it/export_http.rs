//! The HTTP exporter against a small JSON API served on loopback by the test: each
//! pagination style, retries on 429, 500 and timeouts, malformed JSON, repeated keys.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::util::pretty::pretty_format_batches;

use crate::common::{describe, read_parquet, snapshot_part};

/// What the API answers to one request.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    delay: Duration,
}

fn ok(body: String) -> Reply {
    Reply {
        status: 200,
        headers: vec![],
        body,
        delay: Duration::ZERO,
    }
}

type Handler = dyn Fn(&str, &HashMap<String, String>, usize) -> Reply + Send + Sync;

/// One request as received: path and query, and the Authorization header.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    auth: Option<String>,
}

struct Api {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Api {
    /// Serves `handler(path, query, n)` where n counts requests so far (from 0).
    fn start(handler: Box<Handler>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::from(handler);
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let handler = Arc::clone(&handler);
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut first = String::new();
                    if reader.read_line(&mut first).is_err() {
                        return;
                    }
                    let mut auth = None;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("authorization")
                        {
                            auth = Some(v.trim().to_string());
                        }
                    }
                    let target = first.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                    let query: HashMap<String, String> =
                        url::form_urlencoded::parse(query.as_bytes())
                            .into_owned()
                            .collect();
                    let n = {
                        let mut l = log.lock().unwrap();
                        l.push(Seen {
                            target: target.clone(),
                            auth,
                        });
                        l.len() - 1
                    };
                    let reply = handler(path, &query, n);
                    std::thread::sleep(reply.delay);
                    let mut head = format!(
                        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                        reply.status,
                        reply.body.len()
                    );
                    for (k, v) in &reply.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(reply.body.as_bytes());
                });
            }
        });
        Api { port, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn record(i: u64) -> serde_json::Value {
    if i % 7 == 3 {
        // Nulls and absent fields.
        serde_json::json!({"id": i, "email": null, "amount": null, "address": null})
    } else {
        serde_json::json!({
            "id": i,
            "email": format!("u{i}@example.com"),
            "amount": format!("{}.{:02}", i * 3, i % 100).parse::<f64>().unwrap(),
            "active": i.is_multiple_of(2),
            "joined": format!("2024-05-{:02}T10:00:00Z", 1 + i % 28),
            "address": {"city": format!("city-{}", i % 3)},
        })
    }
}

fn records(from: u64, to: u64) -> Vec<serde_json::Value> {
    (from..to.min(TOTAL)).map(record).collect()
}

const TOTAL: u64 = 25;

fn job(dir: &Path, api: &Api, exporter_extra: &str, pagination: &str) {
    std::fs::write(
        dir.join("job.toml"),
        format!(
            r#"[job]
name = "t"
lake = "lake"
[systems]
source = "api"
replica = "other"
[exporters.api]
kind = "http"
base_url = "http://127.0.0.1:{}/v1"
auth_env = "RECON_IT_TOKEN"
page_size = 10
{exporter_extra}
[[entities]]
name = "users"
key = ["id"]
export.api = {{ path = "users", records = "data", {pagination} columns = ["id bigint", "email text", "amount decimal(10,2)", "active boolean", "joined timestamptz", "city text"], json_paths = {{ city = "address.city" }} }}
"#,
            api.port
        ),
    )
    .unwrap();
}

fn export(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recon"))
        .current_dir(dir)
        .args(["export", "--job", "job.toml", "--run-date", "2024-06-01"])
        .env("RECON_IT_TOKEN", "Bearer s3cret")
        .output()
        .unwrap()
}

fn part(dir: &Path) -> PathBuf {
    snapshot_part(&dir.join("lake/snapshots/api/users/run_date=2024-06-01"))
}

fn rows(dir: &Path) -> usize {
    read_parquet(&part(dir)).iter().map(|b| b.num_rows()).sum()
}

fn page_of(q: &HashMap<String, String>, key: &str) -> u64 {
    q.get(key).map(|v| v.parse().unwrap()).unwrap_or(0)
}

fn body(records: Vec<serde_json::Value>, extra: serde_json::Value) -> String {
    let mut b = serde_json::json!({ "data": records });
    if let serde_json::Value::Object(m) = extra {
        for (k, v) in m {
            b[k] = v;
        }
    }
    b.to_string()
}

#[test]
fn page_pagination_maps_json_to_the_declared_types() {
    let api = Api::start(Box::new(|_, q, _| {
        let page = page_of(q, "page");
        let size = page_of(q, "page_size");
        ok(body(
            records((page - 1) * size, page * size),
            serde_json::json!({}),
        ))
    }));
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), &api, "", "");
    let out = export(dir.path());
    assert!(out.status.success(), "{}", describe(&out));
    let seen = api.seen();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            "/v1/users?page=1&page_size=10",
            "/v1/users?page=2&page_size=10",
            "/v1/users?page=3&page_size=10"
        ]
    );
    assert!(
        seen.iter()
            .all(|s| s.auth.as_deref() == Some("Bearer s3cret"))
    );
    let batches = read_parquet(&part(dir.path()));
    let first: Vec<_> = batches
        .iter()
        .map(|b| b.slice(0, 5.min(b.num_rows())))
        .take(1)
        .collect();
    insta::assert_snapshot!(pretty_format_batches(&first).unwrap().to_string());
    assert_eq!(rows(dir.path()), TOTAL as usize);
}

#[test]
fn offset_pagination_stops_at_a_short_page() {
    let api = Api::start(Box::new(|_, q, _| {
        let offset = page_of(q, "offset");
        let limit = page_of(q, "limit");
        ok(body(records(offset, offset + limit), serde_json::json!({})))
    }));
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), &api, "", "pagination = { style = \"offset\" },");
    let out = export(dir.path());
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(api.seen().len(), 3);
    assert_eq!(api.seen()[2].target, "/v1/users?offset=20&limit=10");
    assert_eq!(rows(dir.path()), TOTAL as usize);
}

#[test]
fn cursor_pagination_follows_the_cursor_until_null() {
    let api = Api::start(Box::new(|_, q, _| {
        let from: u64 = q
            .get("after")
            .map(|c| c.trim_start_matches('c').parse().unwrap())
            .unwrap_or(0);
        let next = if from + 10 < TOTAL {
            serde_json::json!(format!("c{}", from + 10))
        } else {
            serde_json::Value::Null
        };
        ok(body(
            records(from, from + 10),
            serde_json::json!({"meta": {"next": next}}),
        ))
    }));
    let dir = tempfile::tempdir().unwrap();
    job(
        dir.path(),
        &api,
        "",
        "pagination = { style = \"cursor\", cursor_param = \"after\", cursor_path = \"meta.next\" },",
    );
    let out = export(dir.path());
    assert!(out.status.success(), "{}", describe(&out));
    let targets: Vec<String> = api.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        [
            "/v1/users?limit=10",
            "/v1/users?limit=10&after=c10",
            "/v1/users?limit=10&after=c20"
        ]
    );
    assert_eq!(rows(dir.path()), TOTAL as usize);
}

#[test]
fn next_link_pagination_from_the_body_and_from_the_link_header() {
    let api = Api::start(Box::new(|path, q, _| {
        let from = page_of(q, "from");
        let more = from + 10 < TOTAL;
        let next = format!("/v1/{}?from={}", path.trim_start_matches("/v1/"), from + 10);
        if path.ends_with("users") {
            let link = if more {
                serde_json::json!(next)
            } else {
                serde_json::Value::Null
            };
            ok(body(
                records(from, from + 10),
                serde_json::json!({"links": {"next": link}}),
            ))
        } else {
            let mut r = ok(body(records(from, from + 10), serde_json::json!({})));
            if more {
                r.headers
                    .push(("Link".into(), format!("<{next}>; rel=\"next\"")));
            }
            r
        }
    }));
    let dir = tempfile::tempdir().unwrap();
    job(
        dir.path(),
        &api,
        "",
        "pagination = { style = \"next_link\", next_path = \"links.next\" },",
    );
    let out = export(dir.path());
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(api.seen().len(), 3);
    assert_eq!(rows(dir.path()), TOTAL as usize);

    let dir = tempfile::tempdir().unwrap();
    job(
        dir.path(),
        &api,
        "",
        "pagination = { style = \"next_link\" },",
    );
    let text_job = std::fs::read_to_string(dir.path().join("job.toml"))
        .unwrap()
        .replace("path = \"users\"", "path = \"people\"");
    std::fs::write(dir.path().join("job.toml"), text_job).unwrap();
    let out = export(dir.path());
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(api.seen().len(), 6);
    assert_eq!(api.seen()[5].target, "/v1/people?from=20");
    assert_eq!(rows(dir.path()), TOTAL as usize);
}

#[test]
fn a_429_and_a_500_succeed_on_retry() {
    let api = Api::start(Box::new(|_, q, n| match n {
        0 => Reply {
            status: 429,
            headers: vec![("Retry-After".into(), "0".into())],
            body: "{}".into(),
            delay: Duration::ZERO,
        },
        1 => Reply {
            status: 500,
            headers: vec![],
            body: "oops".into(),
            delay: Duration::ZERO,
        },
        _ => {
            let page = page_of(q, "page");
            ok(body(
                records((page - 1) * 10, page * 10),
                serde_json::json!({}),
            ))
        }
    }));
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), &api, "", "");
    let out = export(dir.path());
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(api.seen().len(), 5, "two failed attempts, then three pages");
    assert_eq!(rows(dir.path()), TOTAL as usize);
}

#[test]
fn timeouts_are_retried_then_reported() {
    let api = Api::start(Box::new(|_, q, n| {
        let page = page_of(q, "page");
        let mut r = ok(body(
            records((page - 1) * 10, page * 10),
            serde_json::json!({}),
        ));
        if n == 0 {
            r.delay = Duration::from_millis(2500);
        }
        r
    }));
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), &api, "timeout_secs = 1\nmax_retries = 2", "");
    let out = export(dir.path());
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(rows(dir.path()), TOTAL as usize);

    let slow = Api::start(Box::new(|_, _, _| Reply {
        status: 200,
        headers: vec![],
        body: "{\"data\": []}".into(),
        delay: Duration::from_millis(2500),
    }));
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), &slow, "timeout_secs = 1\nmax_retries = 1", "");
    let out = export(dir.path());
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert!(describe(&out).contains("page 1"), "{}", describe(&out));
    assert!(
        describe(&out).contains("no response within 1 s after 2 attempts"),
        "{}",
        describe(&out)
    );
    assert!(
        !dir.path()
            .join("lake/snapshots/api/users/run_date=2024-06-01/_manifest.json")
            .exists()
    );
}

#[test]
fn malformed_json_names_the_page() {
    let api = Api::start(Box::new(|_, q, _| {
        let page = page_of(q, "page");
        if page == 2 {
            ok("{\"data\": [{\"id\": 11,}]".into())
        } else {
            ok(body(
                records((page - 1) * 10, page * 10),
                serde_json::json!({}),
            ))
        }
    }));
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), &api, "", "");
    let out = export(dir.path());
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let t = describe(&out);
    assert!(
        t.contains("entity `users` from api: page 2 (http://127.0.0.1:"),
        "{t}"
    );
    assert!(
        t.contains("/v1/users?page=2&page_size=10): malformed JSON"),
        "{t}"
    );
    // The failed export left nothing behind.
    let snap = dir
        .path()
        .join("lake/snapshots/api/users/run_date=2024-06-01");
    assert!(!snap.exists() || std::fs::read_dir(&snap).unwrap().next().is_none());
}

#[test]
fn a_page_that_repeats_keys_is_an_error() {
    let api = Api::start(Box::new(|_, q, _| {
        let page = page_of(q, "page");
        // Page 2 starts one record early, as offset paging does when a row is inserted.
        let from = if page == 2 { 9 } else { (page - 1) * 10 };
        ok(body(records(from, from + 10), serde_json::json!({})))
    }));
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), &api, "", "");
    let out = export(dir.path());
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(
        describe(&out).contains("record 0 repeats key (id=9) first seen on page 1"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_value_of_the_wrong_type_names_record_and_column() {
    let api = Api::start(Box::new(|_, _, _| {
        ok("{\"data\": [{\"id\": 1, \"amount\": \"12.345\"}]}".into())
    }));
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), &api, "", "");
    let out = export(dir.path());
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(
        describe(&out).contains(
            "record 0, column `amount` (decimal(10,2)): `12.345` has more than 2 decimal places"
        ),
        "{}",
        describe(&out)
    );
}

fn validate_connect(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recon"))
        .current_dir(dir)
        .args(["validate", "--job", "job.toml", "--connect"])
        .env("RECON_IT_TOKEN", "Bearer s3cret")
        .output()
        .unwrap()
}

#[test]
fn validate_connect_reaches_the_api_with_its_credentials() {
    let api = Api::start(Box::new(|_, _, _| ok("{}".into())));
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), &api, "", "");
    let out = validate_connect(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("  api (http): the API (HTTP 200) answered in "),
        "{shown}"
    );
    let seen = api.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, "/v1/");
    assert_eq!(seen[0].auth.as_deref(), Some("Bearer s3cret"));

    // Credentials the API refuses are a configuration mistake: exit 2, no retry.
    let refusing = Api::start(Box::new(|_, _, _| Reply {
        status: 401,
        ..ok("{}".into())
    }));
    job(dir.path(), &refusing, "", "");
    let out = validate_connect(dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("refuses the credentials in RECON_IT_TOKEN") && !shown.contains("s3cret"),
        "{shown}"
    );
}
