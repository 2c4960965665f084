//! Certificates for one cluster (`ringstore certs`): a CA, and node
//! certificates it signs. A node certificate serves both ports: its host
//! names and addresses for HTTPS clients, and `<token>.peer.ringstore`,
//! the name peers check (see [`crate::tls`]), with both the server and the
//! client purpose so one file dials and accepts.
//!
//! No X.509 parser is compiled in: to sign with an existing CA key the CA
//! certificate's fields are rebuilt from the key (the subject is fixed),
//! which gives the same issuer name and key identifier the CA file holds.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

use crate::tls::{cluster_peer_name, TlsError};

/// The CA's subject; fixed, so a CA key alone can sign (see the module doc).
const CA_COMMON_NAME: &str = "ringstore cluster CA";
const ORGANIZATION: &str = "ringstore";
pub const CA_DAYS: u32 = 3650;
pub const NODE_DAYS_DEFAULT: u32 = 365;
/// Hosts one node certificate may name.
pub const HOSTS_MAX: usize = 64;

#[derive(Debug, Error)]
pub enum CertError {
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Cluster(#[from] TlsError),
    #[error("host {0:?} is neither an IP address nor a DNS name")]
    BadHost(String),
    #[error("a certificate names at most {HOSTS_MAX} hosts")]
    TooManyHosts,
    #[error("validity must be 1..=3650 days, not {0}")]
    BadDays(u32),
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // DER integers are signed: keep it positive
    SerialNumber::from_slice(&bytes)
}

fn validity(p: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // An hour back: a peer whose clock is a little behind still accepts it.
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(i64::from(days));
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

/// A new cluster CA (ECDSA P-256, ten years).
pub fn new_ca() -> Result<Pem, CertError> {
    let key = KeyPair::generate()?;
    let mut p = ca_params();
    validity(&mut p, CA_DAYS);
    p.serial_number = Some(serial());
    let cert = p.self_signed(&key)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// A node certificate for the cluster `cluster_token`, naming `hosts`
/// (DNS names, `*.` wildcards, IP addresses), signed by the CA key.
pub fn new_node_cert(ca_key_pem: &str, cluster_token: &str, hosts: &[String], days: u32) -> Result<Pem, CertError> {
    if hosts.len() > HOSTS_MAX {
        return Err(CertError::TooManyHosts);
    }
    if !(1..=CA_DAYS).contains(&days) {
        return Err(CertError::BadDays(days));
    }
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = ca_params().self_signed(&ca_key)?;
    let peer_name = cluster_peer_name(cluster_token)?;
    let mut sans = vec![SanType::DnsName(peer_name.clone().try_into()?)];
    for h in hosts {
        let san = match h.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                // A DNS name, or `*.` and one: what webpki will match.
                let name = h.strip_prefix("*.").unwrap_or(h);
                if rustls_pki_types::DnsName::try_from(name).is_err() {
                    return Err(CertError::BadHost(h.clone()));
                }
                SanType::DnsName(h.clone().try_into().map_err(|_| CertError::BadHost(h.clone()))?)
            }
        };
        sans.push(san);
    }
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, hosts.first().cloned().unwrap_or(peer_name));
    dn.push(DnType::OrganizationName, ORGANIZATION);
    p.distinguished_name = dn;
    p.subject_alt_names = sans;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, days);
    p.serial_number = Some(serial());
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer, &ca_key)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};

    use super::*;
    use crate::tls::{check_cert_names, PeerCertError};

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn node_certs_name_their_cluster_and_hosts() {
        let ca = new_ca().unwrap();
        let node = new_node_cert(&ca.key, "prod", &["127.0.0.1".into(), "*.ringstore.default.svc".into()], 30).unwrap();
        let cert = der(&node.cert);
        let name = |s: &str| ServerName::try_from(s.to_string()).unwrap();
        check_cert_names(&cert, &name("prod.peer.ringstore")).unwrap();
        check_cert_names(&cert, &name("ringstore-0.ringstore.default.svc")).unwrap();
        check_cert_names(&cert, &name("127.0.0.1")).unwrap();
        assert_eq!(
            check_cert_names(&cert, &name("staging.peer.ringstore")),
            Err(PeerCertError::OtherCluster("staging.peer.ringstore".into()))
        );
    }

    #[test]
    fn node_certs_chain_to_their_ca_only() {
        let (ca, other) = (new_ca().unwrap(), new_ca().unwrap());
        let node = new_node_cert(&ca.key, "ringstore", &["localhost".into()], 1).unwrap();
        let verify = |ca_pem: &str| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(der(ca_pem)).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                ringstore_client::tls::provider(),
            )
            .build()
            .unwrap();
            v.verify_client_cert(&der(&node.cert), &[], rustls_pki_types::UnixTime::now())
        };
        verify(&ca.cert).unwrap();
        assert!(verify(&other.cert).is_err(), "a node certificate must not chain to another CA");
    }

    #[test]
    fn bad_requests_are_errors() {
        let ca = new_ca().unwrap();
        assert!(matches!(new_node_cert(&ca.key, "Bad_Token", &[], 30), Err(CertError::Cluster(_))));
        assert!(matches!(new_node_cert(&ca.key, "ok", &[], 0), Err(CertError::BadDays(0))));
        assert!(matches!(new_node_cert(&ca.key, "ok", &["bad host!".into()], 30), Err(CertError::BadHost(_))));
        let many: Vec<String> = (0..=HOSTS_MAX).map(|i| format!("h{i}.example")).collect();
        assert!(matches!(new_node_cert(&ca.key, "ok", &many, 30), Err(CertError::TooManyHosts)));
        assert!(new_node_cert("not a key", "ok", &[], 30).is_err());
    }
}
