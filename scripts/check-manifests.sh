#!/usr/bin/env bash
# Offline checks of the deployment files (part of `make test`): every
# Kubernetes overlay builds with kustomize and validates against the
# Kubernetes API schema of K8S_VERSION (CRDs such as the ServiceMonitor
# have no schema there and are only warned about), and the compose file
# parses. services/node/tests/manifests.rs checks them against the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSION="${K8S_VERSION:-1.30.0}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for overlay in deploy/k8s/overlays/*/; do
  name="$(basename "$overlay")"
  kubectl kustomize "$overlay" > "$out/$name.yaml"
  kubernetes-validate --kubernetes-version "$K8S_VERSION" --strict --quiet --no-warn "$out/$name.yaml"
  echo "manifests: $name overlay builds and validates against Kubernetes $K8S_VERSION"
done
docker-compose -f deploy/compose/docker-compose.yml config -q
echo "manifests: deploy/compose/docker-compose.yml parses"
