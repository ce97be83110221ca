//! TLS to the databases, with rustls and its `ring` provider: the modes (libpq's
//! `sslmode`), the trusted roots and client identity read from files, and the verifier.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// How much TLS a connection asks for, in libpq's words (`sslmode`); the MySQL client's
/// `ssl-mode` maps onto the same five.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without verifying its certificate; plain TCP when
    /// the server has no TLS or the handshake fails. libpq's default.
    Prefer,
    /// TLS, the certificate not verified (with a CA file: as `VerifyCa`, as libpq does).
    Require,
    /// TLS, the certificate's chain verified against the CA file (or the system's roots),
    /// not its host name.
    VerifyCa,
    /// TLS, the certificate's chain and host name verified.
    VerifyFull,
}

impl TlsMode {
    /// libpq's spelling.
    pub fn parse_libpq(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => TlsMode::Disable,
            "prefer" | "allow" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            _ => return None,
        })
    }

    /// The MySQL client's spelling (`--ssl-mode`), any case.
    pub fn parse_mysql(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "DISABLED" => TlsMode::Disable,
            "PREFERRED" => TlsMode::Prefer,
            "REQUIRED" => TlsMode::Require,
            "VERIFY_CA" => TlsMode::VerifyCa,
            "VERIFY_IDENTITY" => TlsMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn verifies(self) -> bool {
        matches!(self, TlsMode::VerifyCa | TlsMode::VerifyFull)
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        })
    }
}

/// A client certificate chain and its private key.
pub type ClientIdentityDer = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The operating system's store, else the Mozilla roots built in.
    System,
    /// The certificates (PEM) in this file only.
    File(PathBuf),
}

/// The TLS settings of one connection URL, as the user wrote them (the options' names
/// are the database's own: `sslrootcert` or `ssl-ca`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: TlsMode,
    pub roots: Roots,
    /// Client certificate (PEM chain) and key (PEM), both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The option names, for messages: (mode, roots, cert, key).
    pub names: [&'static str; 4],
}

impl TlsSettings {
    /// The mode after libpq's rule: `require` with a CA file verifies the chain.
    pub fn effective_mode(&self) -> TlsMode {
        match (self.mode, &self.roots) {
            (TlsMode::Require, Roots::File(_)) => TlsMode::VerifyCa,
            (m, _) => m,
        }
    }

    /// Where the roots came from, for messages.
    pub fn roots_text(&self) -> String {
        match &self.roots {
            Roots::System => "the system's trusted roots".to_string(),
            Roots::File(p) => format!("the CA in {}={}", self.names[1], p.display()),
        }
    }

    /// Reads the files this mode needs and builds the rustls client configuration.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mode = self.effective_mode();
        let roots = if mode.verifies() {
            Some(Arc::new(self.root_store()?))
        } else {
            None
        };
        let verifier = Arc::new(Verifier {
            roots,
            check_name: mode == TlsMode::VerifyFull,
            algorithms: provider.signature_verification_algorithms,
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match self.client_identity()? {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate and key do not go together: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// The trusted roots (PEM).
    pub fn root_store(&self) -> Result<RootCertStore, String> {
        let mut store = RootCertStore::empty();
        match &self.roots {
            Roots::File(path) => {
                let certs = read_certs(self.names[1], path)?;
                for c in certs {
                    store.add(c).map_err(|e| {
                        format!(
                            "{}={}: not a usable CA certificate: {e}",
                            self.names[1],
                            path.display()
                        )
                    })?;
                }
            }
            Roots::System => {
                let found = rustls_native_certs::load_native_certs();
                store.add_parsable_certificates(found.certs);
                if store.is_empty() {
                    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                }
            }
        }
        Ok(store)
    }

    /// The client certificate chain and key, when both are given.
    pub fn client_identity(&self) -> Result<Option<ClientIdentityDer>, String> {
        match (&self.client_cert, &self.client_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                let chain = read_certs(self.names[2], cert)?;
                let bytes = read_file(self.names[3], key)?;
                let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                    format!(
                        "{}={}: no PEM private key in it: {e}",
                        self.names[3],
                        key.display()
                    )
                })?;
                Ok(Some((chain, key)))
            }
            (Some(_), None) => Err(format!(
                "{} is given without {}: a client certificate needs its key",
                self.names[2], self.names[3]
            )),
            (None, Some(_)) => Err(format!(
                "{} is given without {}: a client key needs its certificate",
                self.names[3], self.names[2]
            )),
        }
    }

    /// Reads every file the settings name, so that a missing one is found before any
    /// connection is tried (also in the modes that would not need it).
    pub fn check_files(&self) -> Result<(), String> {
        if self.mode == TlsMode::Disable {
            return Ok(());
        }
        if let Roots::File(p) = &self.roots {
            read_certs(self.names[1], p)?;
        }
        self.client_identity()?;
        Ok(())
    }
}

fn read_file(option: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{option}={}: cannot read it: {e}", path.display()))
}

/// The PEM certificates in a file; none is an error.
pub fn read_certs(option: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_file(option, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{option}={}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{option}={}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Verifies the server's certificate as the mode says: nothing (`roots` is `None`), the
/// chain, or the chain and the host name. The handshake's signatures are always checked.
#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
            if self.check_name {
                rustls::client::verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The rustls error somewhere in an error's chain (through `io::Error`s, whose
/// `source` skips the error they wrap).
pub fn find_rustls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            let inner: &'a (dyn std::error::Error + 'static) = inner;
            cur = Some(inner);
            continue;
        }
        cur = err.source();
    }
    None
}

/// A rustls failure in words: what did not verify, and against what.
pub fn describe_rustls_error(e: &rustls::Error, settings: &TlsSettings) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => {
            let what = match c {
                CertificateError::UnknownIssuer => "it is not signed by a trusted CA".to_string(),
                CertificateError::BadSignature => "its signature does not verify".to_string(),
                other => other.to_string(),
            };
            let against = match c {
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => String::new(),
                _ => format!(" (checked against {})", settings.roots_text()),
            };
            format!(
                "the server's certificate does not verify ({}={}): {what}{against}",
                settings.names[0],
                settings_mode_text(settings)
            )
        }
        rustls::Error::AlertReceived(alert) => format!(
            "the server refused the TLS handshake ({alert:?}){}",
            if settings.client_cert.is_some() {
                ": it may not accept the client certificate"
            } else {
                ": it may want a client certificate"
            }
        ),
        other => format!("TLS handshake failed: {other}"),
    }
}

fn settings_mode_text(settings: &TlsSettings) -> String {
    if settings.names[0] == "ssl-mode" {
        match settings.mode {
            TlsMode::Disable => "DISABLED",
            TlsMode::Prefer => "PREFERRED",
            TlsMode::Require => "REQUIRED",
            TlsMode::VerifyCa => "VERIFY_CA",
            TlsMode::VerifyFull => "VERIFY_IDENTITY",
        }
        .to_string()
    } else {
        settings.mode.to_string()
    }
}

/// Decodes `%XX` escapes (URL query values); `None` when they do not make UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_in_both_spellings() {
        assert_eq!(
            TlsMode::parse_libpq("verify-full"),
            Some(TlsMode::VerifyFull)
        );
        assert_eq!(TlsMode::parse_libpq("VERIFY-FULL"), None);
        assert_eq!(TlsMode::parse_mysql("verify_ca"), Some(TlsMode::VerifyCa));
        assert_eq!(
            TlsMode::parse_mysql("VERIFY_IDENTITY"),
            Some(TlsMode::VerifyFull)
        );
        assert_eq!(TlsMode::parse_mysql("verify-full"), None);
    }

    #[test]
    fn percent_escapes_decode() {
        assert_eq!(percent_decode("%2Fetc%2Fca.pem").unwrap(), "/etc/ca.pem");
        assert_eq!(percent_decode("a%20b").unwrap(), "a b");
        assert_eq!(percent_decode("plain").unwrap(), "plain");
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("50%").unwrap(), "50%");
    }

    #[test]
    fn require_with_a_ca_file_verifies_the_chain() {
        let s = TlsSettings {
            mode: TlsMode::Require,
            roots: Roots::File("/x".into()),
            client_cert: None,
            client_key: None,
            names: ["sslmode", "sslrootcert", "sslcert", "sslkey"],
        };
        assert_eq!(s.effective_mode(), TlsMode::VerifyCa);
    }
}
