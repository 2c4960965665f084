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

if ((${#need[@]})); then
  echo "install-deps: installing ${need[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
