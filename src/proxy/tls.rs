//! What `https://` upstreams are trusted with (feature `tls`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::ConfigError;

/// The certificate authorities `https://` upstreams are verified against
/// (feature `tls`): the system's trust store by default, plus any CA
/// bundle given.
///
/// Verification is rustls' WebPKI verifier (RFC 5280 path building, the
/// name checked against the upstream's host, which is also sent as SNI,
/// RFC 6066 §3). ALPN offers `h2` then `http/1.1` (RFC 7301), so an
/// upstream that picks `h2` is spoken to over HTTP/2.
///
/// ```no_run
/// use tower_ssr::proxy::TlsRoots;
///
/// # fn main() -> Result<(), tower_ssr::proxy::ConfigError> {
/// let roots = TlsRoots::system().try_add_pem_file("/etc/renderers/ca.pem")?;
/// # drop(roots);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct TlsRoots {
    // From the operating system's store; unparsable ones were skipped.
    system: Vec<CertificateDer<'static>>,
    // Given by the user; each one must be a valid CA certificate.
    extra: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRoots")
            .field("system", &self.system.len())
            .field("extra", &self.extra.len())
            .finish()
    }
}

impl TlsRoots {
    /// The operating system's trust store (read with
    /// `rustls-native-certs`, which honours `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR`). Certificates that fail to load are skipped; a
    /// machine without a store yields none, which
    /// [`ProxyBuilder::try_build`](super::ProxyBuilder::try_build) reports
    /// when an `https://` upstream is configured.
    #[must_use]
    pub fn system() -> Self {
        let loaded = rustls_native_certs::load_native_certs();
        TlsRoots {
            system: loaded.certs,
            extra: Vec::new(),
        }
    }

    /// No authority at all: only what [`try_add_pem`](Self::try_add_pem)
    /// adds is trusted (a private PKI between the proxy and renderers).
    #[must_use]
    pub fn empty() -> Self {
        TlsRoots::default()
    }

    /// Adds every certificate of a PEM bundle.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Ca`] when the bundle holds no certificate or one that
    /// does not parse.
    pub fn try_add_pem(mut self, pem: &[u8]) -> Result<Self, ConfigError> {
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ConfigError::Ca(format!("invalid PEM: {e}")))?;
            let mut probe = rustls::RootCertStore::empty();
            probe
                .add(cert.clone())
                .map_err(|e| ConfigError::Ca(format!("not a usable CA certificate: {e}")))?;
            self.extra.push(cert);
            n += 1;
        }
        if n == 0 {
            return Err(ConfigError::Ca("no certificate in the PEM bundle".into()));
        }
        Ok(self)
    }

    /// Adds every certificate of a PEM file (`--ca-file`).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Ca`] when the file cannot be read, or as
    /// [`try_add_pem`](Self::try_add_pem).
    pub fn try_add_pem_file(self, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let pem =
            std::fs::read(path).map_err(|e| ConfigError::Ca(format!("{}: {e}", path.display())))?;
        self.try_add_pem(&pem)
            .map_err(|e| ConfigError::Ca(format!("{}: {e}", path.display())))
    }

    /// How many authorities are trusted.
    #[must_use]
    pub fn len(&self) -> usize {
        self.system.len() + self.extra.len()
    }

    /// Whether no authority is trusted (every TLS handshake would fail).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A rustls client configuration (ring provider, TLS 1.2 and 1.3,
    /// no client certificate) trusting these roots. ALPN is set by
    /// hyper-rustls.
    pub(super) fn client_config(&self) -> Result<rustls::ClientConfig, ConfigError> {
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(self.system.iter().cloned());
        for cert in &self.extra {
            store
                .add(cert.clone())
                .map_err(|e| ConfigError::Ca(e.to_string()))?;
        }
        Self::config_with(store)
    }

    fn config_with(store: rustls::RootCertStore) -> Result<rustls::ClientConfig, ConfigError> {
        Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Tls(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth())
    }
}
