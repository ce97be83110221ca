//! PostgreSQL connections: libpq's TLS options (`sslmode`, `sslrootcert`, `sslcert`,
//! `sslkey`) read from the URL, the rest left to tokio-postgres, TLS by rustls.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{Client, Config};
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

use super::tls::{
    Roots, TlsMode, TlsSettings, describe_rustls_error, find_rustls_error, percent_decode,
};
use crate::error::{Error, Result};

const NAMES: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Opens a connection to the PostgreSQL server of `url` (a `postgres://` URL or a
/// `key=value` string) with the TLS its options ask for. The connection runs on a task
/// of its own, which ends when the client is dropped.
///
/// A TLS failure that no retry can mend (a file missing, a certificate that does not
/// verify, a server without TLS when TLS is required) is [`Error::Tls`]; an unreachable
/// server is [`Error::SourceUnavailable`]. Neither carries the URL or its password.
pub async fn connect(system: &str, url: &str) -> Result<(Client, JoinHandle<()>)> {
    let (rest, tls) = split_tls_options(url).map_err(|reason| Error::Tls {
        system: system.to_string(),
        host: "the PostgreSQL server".to_string(),
        reason,
    })?;
    let mut config = Config::from_str(&rest).map_err(|e| {
        Error::Usage(format!(
            "system `{system}`: the connection URL is not a PostgreSQL URL (postgres://user:password@host:port/database): {}",
            describe(&e)
        ))
    })?;
    let hosts = hosts_text(&config);
    let tls_error = |reason: String| Error::Tls {
        system: system.to_string(),
        host: hosts.clone(),
        reason,
    };
    tls.check_files().map_err(tls_error)?;
    let make = MakeRustls {
        config: tls.client_config().map_err(tls_error)?,
    };
    config.ssl_mode(match tls.mode {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        _ => SslMode::Require,
    });
    let (client, connection) = match config.connect(make.clone()).await {
        Ok(c) => c,
        Err(e) if tls.mode == TlsMode::Prefer && is_tls_failure(&e) => {
            warn!(
                system,
                host = %hosts,
                "TLS failed with sslmode=prefer, connecting without TLS: {}",
                describe(&e)
            );
            config.ssl_mode(SslMode::Disable);
            config
                .connect(make)
                .await
                .map_err(|e| classify(system, &config, &tls, &e))?
        }
        Err(e) => return Err(classify(system, &config, &tls, &e)),
    };
    info!(system, host = %hosts, sslmode = %tls.effective_mode(), "connected to PostgreSQL");
    let handle = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, handle))
}

/// Takes libpq's TLS options out of a connection string: the string tokio-postgres is
/// given, and the settings. Without `sslmode`, the mode is libpq's default, `prefer`.
pub fn split_tls_options(conninfo: &str) -> std::result::Result<(String, TlsSettings), String> {
    let mut values: [Option<String>; 4] = Default::default();
    let mut take = |key: &str, value: String| -> bool {
        match NAMES.iter().position(|n| *n == key) {
            Some(i) => {
                values[i] = Some(value);
                true
            }
            None => false,
        }
    };
    let rest = if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        match conninfo.split_once('?') {
            None => conninfo.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    let key = percent_decode(k).unwrap_or_default();
                    if NAMES.contains(&key.as_str()) {
                        let value = percent_decode(v)
                            .ok_or_else(|| format!("{key}: its value is not valid UTF-8"))?;
                        take(&key, value);
                    } else {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (key, value, raw) in key_values(conninfo)? {
            if !take(&key, value) {
                kept.push(raw);
            }
        }
        kept.join(" ")
    };
    let [mode, root, cert, key] = values;
    let mode = match mode {
        None => TlsMode::Prefer,
        Some(m) => TlsMode::parse_libpq(&m).ok_or_else(|| {
            format!(
                "sslmode={m} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )
        })?,
    };
    let roots = match root.as_deref() {
        None | Some("") | Some("system") => Roots::System,
        Some(p) => Roots::File(p.into()),
    };
    Ok((
        rest,
        TlsSettings {
            mode,
            roots,
            client_cert: cert.filter(|c| !c.is_empty()).map(Into::into),
            client_key: key.filter(|k| !k.is_empty()).map(Into::into),
            names: NAMES,
        },
    ))
}

/// The `key=value` pairs of a libpq connection string: key, unquoted value and the
/// pair's text as written.
fn key_values(s: &str) -> std::result::Result<Vec<(String, String, &str)>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = s[start..i].to_string();
        skip_ws(&mut i);
        if i >= b.len() || b[i] != b'=' {
            return Err(format!(
                "the connection string has `{key}` without `=value`"
            ));
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(format!("{key}: its quoted value has no closing quote")),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
        }
        let value =
            String::from_utf8(value).map_err(|_| format!("{key}: its value is not UTF-8"))?;
        out.push((key, value, &s[start..i]));
    }
}

/// `host:port` of every host the configuration names, for messages.
fn hosts_text(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts = config.get_hosts();
    if hosts.is_empty() {
        return "PostgreSQL".to_string();
    }
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| host_port(h, ports.get(i).or(ports.first()).copied()))
        .collect::<Vec<_>>()
        .join(",")
}

fn host_port(host: &Host, port: Option<u16>) -> String {
    let port = port.unwrap_or(5432);
    match host {
        Host::Tcp(h) => format!("{h}:{port}"),
        #[cfg(unix)]
        Host::Unix(p) => format!("{}:{port}", p.display()),
    }
}

/// The host (with its port) that a TLS handshake failed with.
fn host_of_handshake(config: &Config, host: &str) -> String {
    let ports = config.get_ports();
    let i = config
        .get_hosts()
        .iter()
        .position(|h| matches!(h, Host::Tcp(t) if t == host))
        .unwrap_or(0);
    format!(
        "{host}:{}",
        ports.get(i).or(ports.first()).copied().unwrap_or(5432)
    )
}

fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    find_in_chain::<HandshakeError>(e).is_some()
        || find_rustls_error(e).is_some()
        || e.to_string().starts_with("error performing TLS handshake")
}

/// A connection failure as recon's error: TLS mistakes are [`Error::Tls`] (exit 2),
/// the rest [`Error::SourceUnavailable`] (exit 5).
fn classify(system: &str, config: &Config, tls: &TlsSettings, e: &tokio_postgres::Error) -> Error {
    let hosts = hosts_text(config);
    let tls_error = |host: String, reason: String| Error::Tls {
        system: system.to_string(),
        host,
        reason,
    };
    if let Some(h) = find_in_chain::<HandshakeError>(e) {
        let host = host_of_handshake(config, &h.host);
        if let Some(r) = find_rustls_error(&h.source) {
            return tls_error(host, describe_rustls_error(r, tls));
        }
        if h.source.kind() == io::ErrorKind::InvalidInput {
            return tls_error(host, h.source.to_string());
        }
        // An I/O failure during the handshake (a reset, a timeout): worth a retry.
        return Error::SourceUnavailable {
            system: system.to_string(),
            message: format!("PostgreSQL at {host}: TLS handshake: {}", h.source),
        };
    }
    let text = describe(e);
    if text.contains("server does not support TLS") {
        return tls_error(
            hosts,
            format!(
                "the server does not accept TLS connections, and sslmode={} requires TLS",
                tls.mode
            ),
        );
    }
    if text.contains("no hostname provided for TLS handshake") {
        return tls_error(
            hosts,
            format!("sslmode={} needs a host name to verify", tls.mode),
        );
    }
    Error::SourceUnavailable {
        system: system.to_string(),
        message: format!("PostgreSQL at {hosts}: {text}"),
    }
}

fn find_in_chain<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// A PostgreSQL error with its detail and hint, which `Display` leaves out, or with its
/// causes.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!(" hint: {h}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

/// tokio-postgres's TLS hook, with rustls.
#[derive(Clone)]
struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        Ok(RustlsConnect {
            config: self.config.clone(),
            host: domain.to_string(),
        })
    }
}

struct RustlsConnect {
    config: Arc<ClientConfig>,
    host: String,
}

/// A failed TLS handshake with the host it was with.
#[derive(Debug)]
struct HandshakeError {
    host: String,
    source: io::Error,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS handshake with {}: {}", self.host, self.source)
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = HandshakeError;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<RustlsStream<S>, HandshakeError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.host.clone()).map_err(|e| HandshakeError {
                host: self.host.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("`{}` is not a host name TLS can verify: {e}", self.host),
                ),
            })?;
            TlsConnector::from(self.config)
                .connect(name, stream)
                .await
                .map(RustlsStream)
                .map_err(|source| HandshakeError {
                    host: self.host,
                    source,
                })
        })
    }
}

/// A TLS session over the socket. Channel binding is not offered: SCRAM runs without it.
struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> (String, TlsSettings) {
        split_tls_options(s).unwrap()
    }

    #[test]
    fn url_options_are_taken_out_and_the_rest_kept() {
        let (rest, tls) = split(
            "postgres://u:p%40ss@db.example:5432/app?sslmode=verify-full&application_name=recon&sslrootcert=%2Fetc%2Frds.pem",
        );
        assert_eq!(
            rest,
            "postgres://u:p%40ss@db.example:5432/app?application_name=recon"
        );
        assert_eq!(tls.mode, TlsMode::VerifyFull);
        assert_eq!(tls.roots, Roots::File("/etc/rds.pem".into()));
        let (rest, tls) = split("postgresql://db/app?sslmode=require");
        assert_eq!(rest, "postgresql://db/app");
        assert_eq!(tls.mode, TlsMode::Require);
        assert_eq!(tls.roots, Roots::System);
        let (rest, tls) = split("postgres://db/app");
        assert_eq!(rest, "postgres://db/app");
        assert_eq!(tls.mode, TlsMode::Prefer);
    }

    #[test]
    fn key_value_options_are_taken_out_and_the_rest_kept() {
        let (rest, tls) = split(
            "host=db port=5432 password='a b\\'c' sslmode = verify-ca sslcert='/c/my cert.pem' sslkey=/c/k.pem dbname=app",
        );
        assert_eq!(rest, "host=db port=5432 password='a b\\'c' dbname=app");
        assert_eq!(tls.mode, TlsMode::VerifyCa);
        assert_eq!(tls.client_cert, Some("/c/my cert.pem".into()));
        assert_eq!(tls.client_key, Some("/c/k.pem".into()));
        Config::from_str(&rest).unwrap();
    }

    #[test]
    fn options_tokio_postgres_does_not_know_are_usage_errors_without_the_url() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(connect("db", "postgres://u:secret@db/app?sslcrl=/x.pem"))
            .err()
            .unwrap();
        assert_eq!(e.exit_code(), crate::ExitCode::Usage);
        let text = e.to_string();
        assert!(text.contains("unknown option `sslcrl`"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn bad_options_are_named_without_the_url() {
        let e = split_tls_options("postgres://u:secret@db/app?sslmode=verify").unwrap_err();
        assert!(e.contains("sslmode=verify is not one of"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        let e = split_tls_options("host=db password=secret sslmode").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
