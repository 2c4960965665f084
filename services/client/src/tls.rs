//! HTTPS for clients: trust exactly the cluster CA (`ringstore certs`),
//! never the system's roots, so a node is who the operator's CA says.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The one crypto provider ringstore uses, clients and nodes: *ring*.
/// rustls marks it deprecated for lacking post-quantum key exchange; the
/// alternative, aws-lc-rs, adds a CMake build of its own beside RocksDB's
/// on every fresh machine. Revisit when *ring* or the build allows.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM file, at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// A root store holding the CA certificates in `path`.
pub fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A client configuration trusting only the CA certificates in `ca` (PEM).
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, String> {
    roots_config(read_roots(ca)?).map_err(|e| e.to_string())
}

/// A client configuration trusting only `roots`, speaking HTTP/1.1.
pub fn roots_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An HTTP client with `timeout` per request, speaking HTTPS with `tls`
/// (without it, `https://` URLs fail: no roots are trusted by default).
pub fn http_client(timeout: Duration, tls: Option<&Arc<ClientConfig>>) -> awc::Client {
    let b = awc::Client::builder().timeout(timeout);
    match tls {
        Some(cfg) => b.connector(awc::Connector::new().rustls_0_23(cfg.clone())).finish(),
        None => b.finish(),
    }
}
