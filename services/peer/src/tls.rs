//! [`NodeTls`]: a node's certificate, key and cluster CA, and the rustls
//! configurations made from them: HTTPS on the client port, mutual TLS on
//! the peer port.
//!
//! Peers prove two things before any frame is read: a certificate chained
//! to the cluster CA (rustls checks the chain, both ways), and membership
//! of this cluster: the certificate names `<cluster-token>.peer.ringstore`.
//! A dialer checks that name as the server name; an acceptor checks it on
//! the client certificate ([`NodeTls::check_peer`]). So a node of another
//! cluster signed by the same CA is refused as surely as a stranger.
//!
//! The files are read again by [`NodeTls::reload`] (SIGHUP): new
//! connections use the new certificate and CA at once, established ones
//! keep theirs. A reload that fails keeps the previous material.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ringstore_client::tls::provider;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The DNS-name suffix of a cluster's peer name.
pub const PEER_NAME_SUFFIX: &str = "peer.ringstore";

/// Where a node's TLS material lives (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate (chain), for both ports.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cluster CA: peers must present a certificate it signed.
    pub ca: PathBuf,
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{}: {detail}", path.display())]
    File { path: PathBuf, detail: String },
    #[error(
        "cluster token {0:?} cannot name TLS peers: use 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"
    )]
    ClusterName(String),
    #[error("{}: the certificate does not name {name} (made for another cluster token?)", path.display())]
    NotForCluster { path: PathBuf, name: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("the CA cannot verify peers: {0}")]
    Verifier(String),
}

/// Why a peer's certificate is not one of this cluster's.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeerCertError {
    #[error("the peer sent no certificate")]
    Missing,
    #[error("the peer's certificate does not parse: {0}")]
    Malformed(String),
    #[error("the peer's certificate does not name {0}: a node of another cluster")]
    OtherCluster(String),
}

/// The DNS name every node certificate of the cluster with `token` carries.
pub fn cluster_peer_name(token: &str) -> Result<String, TlsError> {
    let ok = !token.is_empty()
        && token.len() <= 63
        && token.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !token.starts_with('-')
        && !token.ends_with('-');
    if !ok {
        return Err(TlsError::ClusterName(token.to_string()));
    }
    Ok(format!("{token}.{PEER_NAME_SUFFIX}"))
}

/// Whether `cert` (a peer's end-entity certificate, already chained to the
/// CA by rustls) names `cluster`.
pub fn check_cert_names(cert: &CertificateDer<'_>, cluster: &ServerName<'_>) -> Result<(), PeerCertError> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| PeerCertError::Malformed(e.to_string()))?;
    ee.verify_is_valid_for_subject_name(cluster).map_err(|_| PeerCertError::OtherCluster(cluster.to_str().into_owned()))
}

/// What one read of the files yields.
struct Material {
    key: Arc<CertifiedKey>,
    peer_server: Arc<ServerConfig>,
    peer_client: Arc<ClientConfig>,
    ca_roots: Arc<RootCertStore>,
}

pub struct NodeTls {
    files: TlsFiles,
    cluster: ServerName<'static>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Material>>,
}

impl fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTls").field("files", &self.files).field("cluster", &self.cluster).finish()
    }
}

fn file_err(path: &Path, detail: impl fmt::Display) -> TlsError {
    TlsError::File { path: path.to_path_buf(), detail: detail.to_string() }
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    ringstore_client::tls::read_certs(path).map_err(|detail| file_err(path, detail))
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    ringstore_client::tls::read_roots(path).map_err(|detail| file_err(path, detail))
}

impl NodeTls {
    /// Reads the files; the certificate must name this cluster.
    pub fn load(files: TlsFiles, cluster_token: &str) -> Result<Arc<NodeTls>, TlsError> {
        let name = cluster_peer_name(cluster_token)?;
        let cluster = ServerName::try_from(name.clone()).map_err(|_| TlsError::ClusterName(cluster_token.into()))?;
        let provider = provider();
        let material = Self::read(&files, &cluster, &provider)?;
        Ok(Arc::new(NodeTls { files, cluster, provider, current: RwLock::new(Arc::new(material)) }))
    }

    fn read(
        files: &TlsFiles,
        cluster: &ServerName<'static>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Material, TlsError> {
        let chain = read_certs(&files.cert)?;
        let key = read_key(&files.key)?;
        check_cert_names(&chain[0], cluster)
            .map_err(|_| TlsError::NotForCluster { path: files.cert.clone(), name: cluster.to_str().into_owned() })?;
        let roots = Arc::new(read_roots(&files.ca)?);
        let certified = Arc::new(
            CertifiedKey::from_der(chain.clone(), key.clone_key(), provider)
                .map_err(|e| file_err(&files.key, format!("does not match {}: {e}", files.cert.display())))?,
        );
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let peer_server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let peer_client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain, key)?;
        Ok(Material {
            key: certified,
            peer_server: Arc::new(peer_server),
            peer_client: Arc::new(peer_client),
            ca_roots: roots,
        })
    }

    /// Reads the files again; on an error the material in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let m = Self::read(&self.files, &self.cluster, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(m);
        Ok(())
    }

    fn material(&self) -> Arc<Material> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The name every peer certificate must carry.
    pub fn cluster_name(&self) -> &ServerName<'static> {
        &self.cluster
    }

    /// The HTTPS configuration of the client port: the certificate in
    /// force at each handshake, no client certificates (clients use
    /// tokens), and HTTP/1.1 as the only application protocol.
    pub fn http_server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(CurrentCert(self.clone())));
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// A client configuration trusting the cluster CA, for this node's own
    /// HTTPS calls (joining through another member).
    pub fn http_client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        Ok(ringstore_client::tls::roots_config((*self.material().ca_roots).clone())?)
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.material().peer_server.clone())
    }

    pub(crate) fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.material().peer_client.clone())
    }

    /// Whether an accepted peer's certificates name this cluster (rustls
    /// has already chained them to the CA).
    pub fn check_peer(&self, certs: Option<&[CertificateDer<'_>]>) -> Result<(), PeerCertError> {
        let first = certs.and_then(|c| c.first()).ok_or(PeerCertError::Missing)?;
        check_cert_names(first, &self.cluster)
    }
}

/// The client port's certificate: whatever the last (re)load read.
#[derive(Debug)]
struct CurrentCert(Arc<NodeTls>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.material().key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_dns_labels() {
        assert_eq!(cluster_peer_name("ringstore").unwrap(), "ringstore.peer.ringstore");
        assert_eq!(cluster_peer_name("prod-eu-1").unwrap(), "prod-eu-1.peer.ringstore");
        for bad in ["", "Prod", "a.b", "-a", "a-", "a_b", &"a".repeat(64)] {
            assert!(matches!(cluster_peer_name(bad), Err(TlsError::ClusterName(_))), "{bad:?}");
        }
    }

    #[test]
    fn garbage_is_a_malformed_certificate() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        let name = ServerName::try_from("ringstore.peer.ringstore").unwrap();
        assert!(matches!(check_cert_names(&junk, &name), Err(PeerCertError::Malformed(_))));
    }
}
