#!/usr/bin/env bash
# Installs what Conveyor's scripts need and a fresh Debian machine may lack: openssl, curl and
# python3 (certificates, probes, free ports) from Debian's packages. Go and Rust must be
# present (Go 1.26 or newer builds the test plane; Rust stable builds Conveyor).
set -euo pipefail

missing=()
for tool in openssl curl python3 git; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "prereqs: installing ${missing[*]} from Debian's packages" >&2
  if [[ $(id -u) -ne 0 ]]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v go >/dev/null 2>&1; then
  echo "prereqs: Go is required to build the test plane (go.dev/doc/install); none found" >&2
  exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "prereqs: Rust (cargo) is required (rustup.rs); none found" >&2
  exit 1
fi
