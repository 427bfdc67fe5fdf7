#!/usr/bin/env bash
# Installs what Conveyor's scripts need and a fresh Debian machine may lack: openssl, curl and
# python3 (certificates, probes, free ports), and rabbitmq-server (the test plane's RabbitMQ) from
# Debian's packages. Go and Rust must be present (Go 1.26 or newer builds the test plane; Rust
# stable builds Conveyor).
set -euo pipefail

missing=()
for tool in openssl curl python3 git; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# the test plane's RabbitMQ node; hack/cluster.sh runs it from /usr/lib/rabbitmq/bin
rabbitmq=()
[[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || rabbitmq=(rabbitmq-server)
packages=("${missing[@]}" "${rabbitmq[@]}")
if ((${#packages[@]})); then
  echo "prereqs: installing ${packages[*]} from Debian's packages" >&2
  if [[ $(id -u) -ne 0 ]]; then sudo=sudo; else sudo=; fi
  apt=(${sudo:+"$sudo"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq)
  $sudo apt-get update -qq
  if ((${#missing[@]})); then "${apt[@]}" "${missing[@]}" >/dev/null; fi
  # Where policy-rc.d allows it, the package also starts a system-wide node (rabbit@HOST on 5672
  # and 25672, epmd on 4369); the plane's node uses none of those ports.
  if ((${#rabbitmq[@]})); then "${apt[@]}" --no-install-recommends "${rabbitmq[@]}" >/dev/null; fi
fi
if ! command -v go >/dev/null 2>&1; then
  echo "prereqs: Go is required to build the test plane (go.dev/doc/install); none found" >&2
  exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "prereqs: Rust (cargo) is required (rustup.rs); none found" >&2
  exit 1
fi
