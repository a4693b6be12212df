//! TLS to PostgreSQL as libpq does it: the six `sslmode`s with libpq's defaults
//! (`~/.postgresql/root.crt`, `postgresql.crt`, `postgresql.key`), taken from the connection
//! string or libpq's environment, for the control connection (rustls, through
//! tokio-postgres-rustls) and for pg_dump/pg_restore (the same settings in their environment).
//!
//! As in libpq, a root certificate file that exists is used to check the server's chain in every
//! mode that encrypts (so `require` with a root certificate is `verify-ca`); only `verify-full`
//! checks the host name. Unix sockets never use TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Result<SslMode> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(
                    Error::usage(format!("sslmode {other:?} is not one libpq knows"))
                        .with_hint("use disable, allow, prefer, require, verify-ca or verify-full"),
                );
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// The TLS part of a connection string, as given (before libpq's defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: Option<String>,
    pub root_cert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// libpq keys mxsnap does not implement: refused rather than silently ignored.
const UNSUPPORTED: &[&str] = &[
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcompression",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requirepeer",
    "gssencmode",
];

impl TlsParams {
    /// Takes `key = value` if it is one of ours; `Err` for libpq keys mxsnap refuses.
    pub fn take(&mut self, key: &str, value: String) -> Result<bool> {
        let slot = match key {
            "sslmode" => &mut self.mode,
            "sslrootcert" => &mut self.root_cert,
            "sslcert" => &mut self.cert,
            "sslkey" => &mut self.key,
            k if UNSUPPORTED.contains(&k) => {
                return Err(Error::usage(format!(
                    "the connection setting {k} is not supported by mxsnap"
                ))
                .with_hint("leave it out of the database URL"));
            }
            _ => return Ok(false),
        };
        *slot = Some(value);
        Ok(true)
    }
}

/// TLS settings with libpq's environment and defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// The CA file to check the server against: given, or `~/.postgresql/root.crt`.
    pub root_cert: Option<PathBuf>,
    /// Whether `root_cert` was named by the user (a named one must exist).
    pub root_cert_given: bool,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn libpq_dir_file(name: &str) -> Option<PathBuf> {
    env("HOME").map(|h| Path::new(&h).join(".postgresql").join(name))
}

impl TlsSettings {
    pub fn resolve(params: &TlsParams) -> Result<TlsSettings> {
        let mode = match params.mode.clone().or_else(|| env("PGSSLMODE")) {
            Some(m) => SslMode::parse(&m)?,
            None => SslMode::Prefer,
        };
        let given_root = params.root_cert.clone().or_else(|| env("PGSSLROOTCERT"));
        if given_root.as_deref() == Some("system") {
            return Err(
                Error::usage("sslrootcert=system is not supported by mxsnap").with_hint(
                    "name the CA file that signed the server's certificate, e.g. \
                     sslrootcert=/etc/ssl/certs/ca-certificates.crt",
                ),
            );
        }
        let root_cert_given = given_root.is_some();
        let root_cert = given_root
            .map(PathBuf::from)
            .or_else(|| libpq_dir_file("root.crt"));
        let cert = params
            .cert
            .clone()
            .or_else(|| env("PGSSLCERT"))
            .map(PathBuf::from)
            .or_else(|| libpq_dir_file("postgresql.crt").filter(|p| p.is_file()));
        let key = params
            .key
            .clone()
            .or_else(|| env("PGSSLKEY"))
            .map(PathBuf::from)
            .or_else(|| libpq_dir_file("postgresql.key").filter(|p| p.is_file()));
        Ok(TlsSettings {
            mode,
            root_cert,
            root_cert_given,
            cert,
            key,
        })
    }

    /// The environment libpq clients need for the same behaviour.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![("PGSSLMODE", self.mode.as_str().to_string())];
        if let Some(p) = self
            .root_cert
            .as_ref()
            .filter(|p| self.root_cert_given || p.exists())
        {
            vars.push(("PGSSLROOTCERT", p.display().to_string()));
        }
        if let Some(p) = &self.cert {
            vars.push(("PGSSLCERT", p.display().to_string()));
        }
        if let Some(p) = &self.key {
            vars.push(("PGSSLKEY", p.display().to_string()));
        }
        vars
    }

    /// The root certificate file to check the chain with, if any: needed in the verify modes,
    /// used when it exists in the others (as libpq does).
    fn chain_roots(&self) -> Result<Option<&Path>> {
        let Some(path) = self.root_cert.as_deref() else {
            if self.mode.verifies() {
                return Err(missing_root(self.mode, None));
            }
            return Ok(None);
        };
        if path.is_file() {
            return Ok(Some(path));
        }
        if self.mode.verifies() {
            return Err(missing_root(self.mode, Some(path)));
        }
        if self.root_cert_given {
            return Err(Error::environment(format!(
                "the root certificate file {} (sslrootcert) does not exist",
                path.display()
            ))
            .with_hint("name an existing CA file, or leave sslrootcert out"));
        }
        Ok(None)
    }

    /// A rustls configuration for this mode.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match self.chain_roots()? {
            None => Arc::new(AcceptAnyCertificate(provider.clone())),
            Some(path) => {
                let roots = load_roots(path)?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| {
                            Error::environment(format!(
                                "the root certificates in {} cannot be used: {e}",
                                path.display()
                            ))
                        })?;
                if self.mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::environment(format!("TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match (&self.cert, &self.key) {
            (Some(cert), key) => {
                let chain = load_certs(cert, "client certificate (sslcert)")?;
                let key_path = key.clone().unwrap_or_else(|| cert.with_extension("key"));
                let key = load_key(&key_path)?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    Error::environment(format!(
                        "the client certificate {} and key {} do not go together: {e}",
                        cert.display(),
                        key_path.display()
                    ))
                })
            }
            (None, _) => Ok(builder.with_no_client_auth()),
        }
    }
}

fn missing_root(mode: SslMode, path: Option<&Path>) -> Error {
    let what = match path {
        Some(p) => format!("{} does not exist", p.display()),
        None => "none is given and HOME is not set".to_string(),
    };
    Error::environment(format!(
        "sslmode={} needs the CA certificate that signed the server's certificate: {what}",
        mode.as_str()
    ))
    .with_hint(
        "name the CA file with sslrootcert=/path/to/root.crt in the database URL (or \
         PGSSLROOTCERT), or use sslmode=require to encrypt without checking the server",
    )
}

fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: std::result::Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, what, e))?
        .collect();
    let certs = certs.map_err(|e| pem_error(path, what, e))?;
    if certs.is_empty() {
        return Err(Error::environment(format!(
            "the {what} file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn pem_error(path: &Path, what: &str, e: rustls::pki_types::pem::Error) -> Error {
    match e {
        rustls::pki_types::pem::Error::Io(io) => {
            Error::io(format!("reading the {what} file {}", path.display()), io)
        }
        other => Error::environment(format!(
            "the {what} file {} is not valid PEM: {other}",
            path.display()
        )),
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, "root certificate (sslrootcert)")? {
        roots.add(cert).map_err(|e| {
            Error::environment(format!(
                "a certificate in {} cannot be used as a root: {e}",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::io(
            format!("reading the private key (sslkey) {}", path.display()),
            e,
        )
    })?;
    // libpq's rule: no group or other access, except group read for a root-owned key.
    let mode = meta.mode() & 0o777;
    let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
    if mode & !allowed != 0 {
        return Err(Error::environment(format!(
            "the private key {} has group or world access (mode {mode:o})",
            path.display()
        ))
        .with_hint(format!(
            "chmod {allowed:o} {} (libpq refuses it too)",
            path.display()
        )));
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => Error::environment(format!(
            "the private key (sslkey) {} holds no unencrypted PEM key",
            path.display()
        ))
        .with_hint("encrypted keys are not supported: decrypt it with openssl pkey"),
        other => pem_error(path, "private key (sslkey)", other),
    })
}

/// `require`/`prefer`/`allow` without a root certificate: encrypted, the server unchecked (the
/// handshake's signatures are still verified, so the connection is to whoever holds the key).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the root certificate; the host name is not checked.
/// webpki checks the name only after the chain, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The rustls error somewhere in a connection error's chain, if TLS is what failed.
pub fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_libpq_spells_them() {
        for m in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            assert_eq!(SslMode::parse(m).unwrap().as_str(), m);
        }
        let e = SslMode::parse("verify_full").unwrap_err();
        assert!(e.hint().unwrap().contains("verify-full"));
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let settings = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some(dir.path().join("root.crt")),
            root_cert_given: false,
            cert: None,
            key: None,
        };
        let e = settings.client_config().unwrap_err();
        assert!(e.message().contains("verify-full needs the CA"), "{e}");
        assert!(e.hint().unwrap().contains("sslrootcert"));
        // require without one encrypts unchecked
        let require = TlsSettings {
            mode: SslMode::Require,
            ..settings.clone()
        };
        require.client_config().unwrap();
        // but a root certificate that was named must exist
        let named = TlsSettings {
            root_cert_given: true,
            ..require
        };
        assert!(named.client_config().is_err());
    }

    #[test]
    fn keys_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_key(&key).unwrap_err();
        assert!(e.message().contains("group or world access"), "{e}");
    }
}
