//! TLS end to end, on three real `ringstore node` processes with
//! certificates from `ringstore certs`: HTTPS for clients that trust the
//! cluster CA, plain HTTP to the TLS port failing cleanly, peers refused
//! during the handshake for a certificate of another CA, no certificate,
//! or another cluster's token (before any frame is decoded), and a
//! renewed certificate taken on SIGHUP without a restart.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use ringstore_client::KvClient;
use ringstore_peer::wire;
use ringstore_testkit::ProcCluster;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const BIN: &str = env!("CARGO_BIN_EXE_ringstore");
const FAST: [&str; 6] = ["--raft-tick-ms", "50", "--raft-election-ticks", "10", "--shards", "1"];

fn ringstore(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(BIN).args(args).output().expect("ringstore runs");
    assert!(out.status.success(), "ringstore {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A CA in `dir` and node certificate `name` for `token`.
fn certs(dir: &Path, name: &str, token: &str) {
    let d = dir.to_str().unwrap();
    if !dir.join("ca.key").exists() {
        ringstore(&["certs", "ca", "--dir", d]);
    }
    ringstore(&["certs", "node", name, "--dir", d, "--cluster-token", token, "--host", "127.0.0.1"]);
}

fn https(c: &ProcCluster, id: u64) -> String {
    c.url(id).replacen("http://", "https://", 1)
}

fn tls_args(dir: &Path) -> Vec<String> {
    let f = |n: &str| dir.join(n).to_str().unwrap().to_string();
    vec!["--tls-cert".into(), f("node.crt"), "--tls-key".into(), f("node.key"), "--tls-ca".into(), f("ca.crt")]
}

/// A TLS client configuration for the peer port: trusting `ca`, showing
/// `client` (cert, key) if given.
fn peer_client(ca: &Path, client: Option<(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
    let roots = ringstore_client::tls::read_roots(ca).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(ringstore_client::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        Some((cert, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    })
}

/// Dials the peer port over TLS and sends a hello from a stranger (node
/// 99): `Ok(frame)` if the node read it and answered, `Err` if the
/// connection was refused before that.
async fn dial_peer(port: u16, cfg: Arc<rustls::ClientConfig>) -> Result<wire::Frame, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("ringstore.peer.ringstore").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    wire::encode_hello(&mut buf, &wire::Hello { cluster_id: 1, from: 99, to: 1 });
    s.write_all(&buf).await.map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    let mut header = [0u8; wire::FRAME_HEADER_BYTES];
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut header)).await;
    read.map_err(|_| "no answer".to_string())?.map_err(|e| e.to_string())?;
    let mut body = vec![0u8; wire::frame_len(header).map_err(|e| e.to_string())?];
    s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    wire::decode(&body).map_err(|e| e.to_string())
}

/// The certificate the node at `port` shows an HTTPS client, and the
/// application protocol it picks when the client offers h2 first.
async fn served_cert(port: u16, ca: &Path) -> (CertificateDer<'static>, Option<Vec<u8>>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut cfg = (*ringstore_client::tls::client_config(ca).unwrap()).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap();
    let conn = s.get_ref().1;
    (conn.peer_certificates().unwrap()[0].clone().into_owned(), conn.alpn_protocol().map(<[u8]>::to_vec))
}

async fn refused_tls(c: &ProcCluster, id: u64) -> f64 {
    let cfg = ringstore_client::tls::client_config(&c.dir().join("ca-a").join("ca.crt")).unwrap();
    let client = ringstore_client::tls::http_client(Duration::from_secs(5), Some(&cfg));
    let mut r = client.get(format!("{}/metrics", https(c, id))).send().await.unwrap();
    let text = String::from_utf8(r.body().limit(16 << 20).await.unwrap().to_vec()).unwrap();
    text.lines()
        .filter(|l| l.starts_with("ringstore_peer_refused_total{") && l.contains("reason=\"tls\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[actix_rt::test]
async fn tls_clients_and_mutual_tls_peers_with_a_cluster_ca() {
    let base = tempfile::tempdir().unwrap();
    let (a, b) = (base.path().join("ca-a"), base.path().join("ca-b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
    }
    certs(&a, "node", "ringstore");
    certs(&a, "other-cluster", "staging");
    certs(&b, "node", "ringstore");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(a.join("ca.key")).unwrap().permissions());
    assert_eq!(key_mode & 0o077, 0, "keys are readable by their owner only");

    // A certificate that does not name the cluster token: the node says so
    // and does not start.
    let out = std::process::Command::new(BIN)
        .args(["node", "--id", "1", "--initial-cluster", "1=127.0.0.1:1", "--data-dir"])
        .arg(base.path().join("refused"))
        .args(["--tls-cert", a.join("other-cluster.crt").to_str().unwrap()])
        .args(["--tls-key", a.join("other-cluster.key").to_str().unwrap()])
        .args(["--tls-ca", a.join("ca.crt").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not name ringstore.peer.ringstore"), "{err}");

    let mut args: Vec<String> = FAST.iter().map(|s| s.to_string()).collect();
    args.extend(tls_args(&a));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = ProcCluster::start(Path::new(BIN), 3, &args, Some(base.path())).expect("three TLS processes start");
    let urls: Vec<String> = c.ids().into_iter().map(|id| https(&c, id)).collect();

    // Clients that trust the CA: the cluster forms over mutual TLS and any
    // node serves any request (forwarded over the peer links).
    let tls = ringstore_client::tls::client_config(&a.join("ca.crt")).unwrap();
    let kv = |url: &str| KvClient::new(vec![url.to_string()], Duration::from_secs(5)).with_tls(&tls);
    eventually(Duration::from_secs(30), "a write over HTTPS is acknowledged", || {
        let kv = kv(&urls[0]);
        async move { kv.put("tls/k", b"v", None).await.is_ok() }
    })
    .await;
    for url in &urls {
        let got = kv(url).get("tls/k").await.unwrap_or_else(|e| panic!("GET via {url}: {e}; log:\n{}", c.log(1)));
        assert_eq!(got.map(|g| g.0), Some(b"v".to_vec()), "via {url}");
    }
    for id in c.ids() {
        assert!(c.log(id).contains("connected to peer"), "node {id} links to its peers over TLS");
    }

    // The Python client with the CA (and, without it, a refusal).
    let py = |ca: &Path| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/python");
        let script = "import ringstore as r; c = r.Client(); c.put('py/tls', b'x'); print(c.get('py/tls')[0].decode())";
        std::process::Command::new("python3")
            .args(["-c", script])
            .env("PYTHONPATH", &root)
            .env("RINGSTORE_ENDPOINTS", &urls[1])
            .env("RINGSTORE_CA", ca)
            .output()
            .expect("python3 runs")
    };
    let out = py(&a.join("ca.crt"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "x");
    let out = py(&b.join("ca.crt"));
    assert!(!out.status.success(), "the Python client trusting another CA must fail");

    // A client trusting another CA does not talk to the cluster.
    let wrong = ringstore_client::tls::client_config(&b.join("ca.crt")).unwrap();
    let err = KvClient::new(vec![urls[0].clone()], Duration::from_secs(2)).with_tls(&wrong).get("tls/k").await;
    assert!(err.is_err(), "a client of another CA must fail: {err:?}");

    // Plain HTTP to the TLS port: no HTTP answer, the connection ends, and
    // the node serves HTTPS as before.
    let http_port: u16 = c.url(1).rsplit(':').next().unwrap().parse().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", http_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1 200"), "plain HTTP got an answer: {got:?}");
    assert!(kv(&urls[0]).get("tls/k").await.is_ok());

    // Strangers on the peer port are refused during the handshake, logged
    // and counted; nothing they send is decoded.
    let peer = c.peer_port(1);
    let before = refused_tls(&c, 1).await;
    let ca = a.join("ca.crt");
    let strangers = [
        ("no client certificate", peer_client(&ca, None)),
        ("a certificate of another CA", peer_client(&ca, Some((b.join("node.crt"), b.join("node.key"))))),
        (
            "a certificate of this CA for another cluster",
            peer_client(&ca, Some((a.join("other-cluster.crt"), a.join("other-cluster.key")))),
        ),
    ];
    for (what, cfg) in &strangers {
        let r = dial_peer(peer, cfg.clone()).await;
        assert!(r.is_err(), "{what}: the node answered {r:?}");
    }
    let want = before + strangers.len() as f64;
    eventually(Duration::from_secs(10), "every refusal is counted", || {
        let c = &c;
        async move { refused_tls(c, 1).await >= want }
    })
    .await;
    assert!(c.log(1).contains("refused peer"), "refusals are logged");
    // The control: this cluster's certificate gets through TLS, and the
    // hello of a non-member is then answered with a reject frame.
    let member = peer_client(&ca, Some((a.join("node.crt"), a.join("node.key"))));
    match dial_peer(peer, member).await {
        Ok(wire::Frame::Reject { .. }) => {}
        other => panic!("a certificate of this cluster must reach the hello check: {other:?}"),
    }

    // Renewal: a new certificate for node 1's files, SIGHUP, and new
    // connections get it; the links to its peers keep working.
    let (old, alpn) = served_cert(http_port, &ca).await;
    // HTTP/1.1 only, even to a client that prefers h2 (h2 0.3 is not
    // served: RUSTSEC-2026-0258, audit/accepted.toml).
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    certs(&a, "node", "ringstore");
    let new = CertificateDer::from_pem_file(a.join("node.crt")).unwrap();
    assert_ne!(old, new);
    let pid = c.pid(1).expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    eventually(Duration::from_secs(10), "node 1 serves the renewed certificate", || {
        let (ca, new) = (ca.clone(), new.clone());
        async move { served_cert(http_port, &ca).await.0 == new }
    })
    .await;
    assert!(c.log(1).contains("TLS certificate, key and CA read again"));
    kv(&urls[0]).put("tls/after", b"renewed", None).await.unwrap();
    let got = kv(&urls[2]).get("tls/after").await.unwrap().map(|g| g.0);
    assert_eq!(got, Some(b"renewed".to_vec()));
}
