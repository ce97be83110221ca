//! MySQL and MariaDB connections: the MySQL client's TLS options (`ssl-mode`, `ssl-ca`,
//! `ssl-cert`, `ssl-key`) and mysql_async's own (`require_ssl`, `verify_ca`,
//! `verify_identity`, `built_in_roots`) read from the URL onto one mode, TLS by rustls.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::{ClientIdentity, Conn, Opts, OptsBuilder, SslOpts};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::tls::{Roots, TlsMode, TlsSettings, describe_rustls_error, find_rustls_error};
use crate::error::{Error, Result};

const NAMES: [&str; 4] = ["ssl-mode", "ssl-ca", "ssl-cert", "ssl-key"];

/// Opens a connection to the MySQL or MariaDB server of `url`
/// (`mysql://user:password@host:port/database?options`) with the TLS its options ask
/// for; `tune` sets further options (e.g. `client_found_rows`).
///
/// Without a TLS option the connection is plain, as mysql_async makes it. TLS mistakes
/// are [`Error::Tls`], an unreachable server [`Error::SourceUnavailable`]; neither
/// carries the URL or its password.
pub async fn connect(
    system: &str,
    url: &str,
    tune: impl FnOnce(OptsBuilder) -> OptsBuilder,
) -> Result<Conn> {
    let not_mysql = |e: String| {
        Error::Usage(format!(
            "system `{system}`: the connection URL is not a MySQL URL (mysql://user:password@host:port/database): {e}"
        ))
    };
    let parsed = url::Url::parse(url).map_err(|e| not_mysql(e.to_string()))?;
    let (rest, tls) = split_tls_options(url).map_err(|reason| Error::Tls {
        system: system.to_string(),
        host: format!(
            "{}:{}",
            parsed.host_str().unwrap_or("localhost"),
            parsed.port().unwrap_or(3306)
        ),
        reason,
    })?;
    let opts = Opts::from_url(&rest).map_err(|e| not_mysql(e.to_string()))?;
    let host = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    let tls_error = |reason: String| Error::Tls {
        system: system.to_string(),
        host: host.clone(),
        reason,
    };
    let builder = tune(OptsBuilder::from_opts(opts.clone()));
    let Some(tls) = tls else {
        return Conn::new(builder)
            .await
            .map_err(|e| classify(system, &host, None, e));
    };
    tls.check_files().map_err(tls_error)?;
    let mode = tls.effective_mode();
    if mode == TlsMode::Disable {
        return Conn::new(builder.ssl_opts(None::<SslOpts>))
            .await
            .map_err(|e| classify(system, &host, Some(&tls), e));
    }
    let mut ssl = SslOpts::default();
    if let Some((chain, key)) = identity_pem(&tls).map_err(tls_error)? {
        ssl = ssl.with_client_identity(Some(ClientIdentity::new(chain.into(), key.into())));
    }
    if let Roots::File(path) = &tls.roots {
        let pem = std::fs::read(path).map_err(|e| {
            tls_error(format!(
                "{}={}: cannot read it: {e}",
                NAMES[1],
                path.display()
            ))
        })?;
        ssl = ssl
            .with_root_certs(vec![pem.into()])
            .with_disable_built_in_roots(true);
    }
    match mode {
        TlsMode::Prefer | TlsMode::Require => {
            ssl = ssl.with_danger_accept_invalid_certs(true);
        }
        TlsMode::VerifyCa => {
            // mysql_async 0.37's own switch for this (`verify_identity=false`) has no
            // effect with rustls 0.23 (blackbeam/mysql_async#404), so the chain is
            // verified on a first handshake, and the name the certificate gives is the
            // one the connection then verifies (chain and name) against the same roots.
            let config = tls.client_config().map_err(tls_error)?;
            let name = probe_certificate_name(opts.ip_or_hostname(), opts.tcp_port(), config)
                .await
                .map_err(|p| match p {
                    Probe::Tls(reason) => tls_error(reason),
                    Probe::NoTls => tls_error(no_tls_reason(&tls)),
                    Probe::Io(e) => Error::SourceUnavailable {
                        system: system.to_string(),
                        message: format!("MySQL at {host}: {e}"),
                    },
                    Probe::Rustls(e) => tls_error(describe_rustls_error(&e, &tls)),
                })?;
            ssl = ssl.with_danger_tls_hostname_override(Some(name));
        }
        TlsMode::VerifyFull | TlsMode::Disable => {}
    }
    // mysql_async moves a connection to 127.0.0.1 onto the server's Unix socket, without
    // TLS; a URL that requires TLS keeps the TCP connection it verified.
    let builder = if mode == TlsMode::Prefer {
        builder
    } else {
        builder.prefer_socket(false)
    };
    match Conn::new(builder.clone().ssl_opts(ssl)).await {
        Ok(c) => {
            info!(system, host = %host, ssl_mode = %mode, "connected to MySQL");
            Ok(c)
        }
        Err(e) if tls.mode == TlsMode::Prefer && is_tls_failure(&e) => {
            warn!(system, host = %host, "TLS failed with ssl-mode=PREFERRED, connecting without TLS: {e}");
            Conn::new(builder.ssl_opts(None::<SslOpts>))
                .await
                .map_err(|e| classify(system, &host, Some(&tls), e))
        }
        Err(e) => Err(classify(system, &host, Some(&tls), e)),
    }
}

/// Takes the TLS options out of a MySQL URL: the URL mysql_async is given, and the
/// settings (`None` when the URL has no TLS option).
pub fn split_tls_options(url: &str) -> std::result::Result<(String, Option<TlsSettings>), String> {
    let mut parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let mut kept: Vec<(String, String)> = Vec::new();
    let mut ours: [Option<String>; 4] = Default::default();
    let mut native: [Option<bool>; 4] = [None; 4];
    const NATIVE: [&str; 4] = [
        "require_ssl",
        "verify_ca",
        "verify_identity",
        "built_in_roots",
    ];
    for (k, v) in parsed.query_pairs() {
        let key = k.replace('_', "-");
        if let Some(i) = NAMES.iter().position(|n| *n == key) {
            ours[i] = Some(v.into_owned());
        } else if let Some(i) = NATIVE.iter().position(|n| *n == k) {
            native[i] = Some(match v.as_ref() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => return Err(format!("{k}={other} is not true or false")),
            });
        } else {
            kept.push((k.into_owned(), v.into_owned()));
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let [mode, ca, cert, key] = ours;
    let [require_ssl, verify_ca, verify_identity, built_in_roots] = native;
    let uses_native = native.iter().any(Option::is_some);
    if mode.is_some() && uses_native {
        return Err(format!(
            "give ssl-mode or mysql_async's {}, not both",
            NATIVE.join("/")
        ));
    }
    let mode = match (&mode, require_ssl) {
        (Some(m), _) => TlsMode::parse_mysql(m).ok_or_else(|| {
            format!(
                "ssl-mode={m} is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"
            )
        })?,
        (None, Some(true)) => match (verify_ca.unwrap_or(true), verify_identity.unwrap_or(true)) {
            (false, _) => TlsMode::Require,
            (true, false) => TlsMode::VerifyCa,
            (true, true) => TlsMode::VerifyFull,
        },
        (None, Some(false)) => TlsMode::Disable,
        // The mysql client's rule: a CA without a mode verifies the chain.
        (None, None) if ca.is_some() => TlsMode::VerifyCa,
        (None, None) if cert.is_some() || key.is_some() => TlsMode::Prefer,
        (None, None) if uses_native => {
            return Err("verify_ca, verify_identity and built_in_roots need require_ssl=true".into());
        }
        (None, None) => return Ok((parsed.to_string(), None)),
    };
    let roots = match ca.filter(|c| !c.is_empty()) {
        Some(p) => Roots::File(p.into()),
        None if built_in_roots == Some(false) && mode.verifies() => {
            return Err("built_in_roots=false needs ssl-ca=<file> with the CA to trust".into());
        }
        None => Roots::System,
    };
    Ok((
        parsed.to_string(),
        Some(TlsSettings {
            mode,
            roots,
            client_cert: cert.filter(|c| !c.is_empty()).map(Into::into),
            client_key: key.filter(|k| !k.is_empty()).map(Into::into),
            names: NAMES,
        }),
    ))
}

/// A client certificate chain and its key, as PEM text.
type CertAndKeyPem = (Vec<u8>, Vec<u8>);

/// The client certificate and key files' bytes, when given.
fn identity_pem(tls: &TlsSettings) -> std::result::Result<Option<CertAndKeyPem>, String> {
    // Parsed first, for a clear message; mysql_async parses them again.
    if tls.client_identity()?.is_none() {
        return Ok(None);
    }
    let read = |name: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("{name}={}: cannot read it: {e}", p.display()))
    };
    match (&tls.client_cert, &tls.client_key) {
        (Some(c), Some(k)) => Ok(Some((read(NAMES[2], c)?, read(NAMES[3], k)?))),
        _ => Ok(None),
    }
}

fn no_tls_reason(tls: &TlsSettings) -> String {
    format!(
        "the server does not accept TLS connections, and ssl-mode={} requires TLS",
        match tls.mode {
            TlsMode::Require => "REQUIRED",
            TlsMode::VerifyCa => "VERIFY_CA",
            _ => "VERIFY_IDENTITY",
        }
    )
}

fn is_tls_failure(e: &mysql_async::Error) -> bool {
    matches!(
        e,
        mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer)
            | mysql_async::Error::Io(mysql_async::IoError::Tls(_))
    ) || find_rustls_error(e).is_some()
}

fn classify(system: &str, host: &str, tls: Option<&TlsSettings>, e: mysql_async::Error) -> Error {
    if let Some(tls) = tls {
        let tls_error = |reason: String| Error::Tls {
            system: system.to_string(),
            host: host.to_string(),
            reason,
        };
        if let mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) = e {
            return tls_error(no_tls_reason(tls));
        }
        if let Some(r) = find_rustls_error(&e) {
            return tls_error(describe_rustls_error(r, tls));
        }
        if let mysql_async::Error::Io(mysql_async::IoError::Tls(t)) = &e {
            return tls_error(format!("TLS: {t}"));
        }
    }
    match e {
        mysql_async::Error::Url(u) => Error::Usage(format!(
            "system `{system}`: the connection URL is not a MySQL URL (mysql://user:password@host:port/database): {u}"
        )),
        e => Error::SourceUnavailable {
            system: system.to_string(),
            message: format!("MySQL at {host}: {e}"),
        },
    }
}

enum Probe {
    Io(std::io::Error),
    NoTls,
    Tls(String),
    Rustls(rustls::Error),
}

impl From<std::io::Error> for Probe {
    fn from(e: std::io::Error) -> Self {
        match find_rustls_error(&e) {
            Some(r) => Probe::Rustls(r.clone()),
            None => Probe::Io(e),
        }
    }
}

/// Opens a TLS session as the MySQL protocol does (the server's greeting, an
/// `SSLRequest`, the handshake) with `config`, which verifies the chain, and returns a
/// DNS name the server's certificate is valid for. Sends no credentials.
async fn probe_certificate_name(
    host: &str,
    port: u16,
    config: Arc<ClientConfig>,
) -> std::result::Result<String, Probe> {
    let timeout = Duration::from_secs(30);
    let work = async {
        let mut tcp = TcpStream::connect((host, port)).await?;
        let mut header = [0u8; 4];
        tcp.read_exact(&mut header).await?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
        let mut greeting = vec![0u8; len];
        tcp.read_exact(&mut greeting).await?;
        let bad = || Probe::Tls("the server's greeting is not MySQL's protocol 10".to_string());
        match greeting.first() {
            Some(10) => {}
            Some(0xff) => {
                let msg = String::from_utf8_lossy(greeting.get(3..).unwrap_or_default());
                return Err(Probe::Io(std::io::Error::other(format!(
                    "the server refused the connection: {msg}"
                ))));
            }
            _ => return Err(bad()),
        }
        let version_end = greeting[1..].iter().position(|&b| b == 0).ok_or_else(bad)? + 1;
        // NUL, thread id (4), auth data (8), filler (1), then the capability flags' low half.
        let at = version_end + 1 + 4 + 8 + 1;
        let caps = greeting.get(at..at + 2).ok_or_else(bad)?;
        const CLIENT_SSL: u32 = 0x0800;
        if u16::from_le_bytes([caps[0], caps[1]]) as u32 & CLIENT_SSL == 0 {
            return Err(Probe::NoTls);
        }
        // SSLRequest: capabilities, max packet size, character set, 23 zero bytes.
        let flags: u32 = 0x0000_0001 | 0x0000_0200 | CLIENT_SSL | 0x0000_8000 | 0x0008_0000;
        let mut packet = vec![32u8, 0, 0, 1];
        packet.extend(flags.to_le_bytes());
        packet.extend((16u32 << 20).to_le_bytes());
        packet.push(45);
        packet.extend([0u8; 23]);
        tcp.write_all(&packet).await?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| Probe::Tls(format!("`{host}` is not a host name: {e}")))?;
        let mut session = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let names: Vec<String> = {
            let (_, conn) = session.get_ref();
            let cert = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| Probe::Tls("the server sent no certificate".to_string()))?;
            let ee = webpki::EndEntityCert::try_from(cert)
                .map_err(|e| Probe::Tls(format!("the server's certificate cannot be read: {e}")))?;
            ee.valid_dns_names().map(str::to_string).collect()
        };
        let _ = session.shutdown().await;
        names
            .into_iter()
            .next()
            .map(|n| match n.strip_prefix("*.") {
                Some(rest) => format!("recon.{rest}"),
                None => n,
            })
            .ok_or_else(|| {
                Probe::Tls(
                    "the server's certificate has no DNS name (subjectAltName), which VERIFY_CA needs here; use VERIFY_IDENTITY or REQUIRED"
                        .to_string(),
                )
            })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Probe::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no TLS handshake within 30 s",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mysql_clients_options_map_onto_the_modes() {
        let (rest, tls) = split_tls_options(
            "mysql://u:p%40ss@db:3306/app?ssl-mode=VERIFY_IDENTITY&ssl-ca=%2Fetc%2Frds.pem&prefer_socket=false",
        )
        .unwrap();
        assert_eq!(rest, "mysql://u:p%40ss@db:3306/app?prefer_socket=false");
        let tls = tls.unwrap();
        assert_eq!(tls.mode, TlsMode::VerifyFull);
        assert_eq!(tls.roots, Roots::File("/etc/rds.pem".into()));
        let (_, tls) = split_tls_options("mysql://db/app?ssl_mode=required").unwrap();
        assert_eq!(tls.unwrap().mode, TlsMode::Require);
        let (_, tls) = split_tls_options("mysql://db/app?ssl-ca=/ca.pem").unwrap();
        assert_eq!(tls.unwrap().mode, TlsMode::VerifyCa);
        let (rest, tls) = split_tls_options("mysql://db/app").unwrap();
        assert_eq!(rest, "mysql://db/app");
        assert!(tls.is_none());
    }

    #[test]
    fn mysql_asyncs_own_options_map_onto_the_modes() {
        let mode = |q: &str| {
            split_tls_options(&format!("mysql://db/app?{q}"))
                .unwrap()
                .1
                .map(|t| t.mode)
        };
        assert_eq!(mode("require_ssl=true"), Some(TlsMode::VerifyFull));
        assert_eq!(
            mode("require_ssl=true&verify_identity=false"),
            Some(TlsMode::VerifyCa)
        );
        assert_eq!(
            mode("require_ssl=true&verify_ca=false"),
            Some(TlsMode::Require)
        );
        assert_eq!(mode("require_ssl=false"), Some(TlsMode::Disable));
        assert!(split_tls_options("mysql://db/app?require_ssl=true&ssl-mode=REQUIRED").is_err());
        assert!(split_tls_options("mysql://db/app?require_ssl=yes").is_err());
    }
}
