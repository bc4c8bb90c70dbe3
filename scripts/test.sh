#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every unit and end-to-end test.
# Installs only what is missing, so repeat runs stay fast. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

need_cargo_component() {
  if ! cargo "$1" --version >/dev/null 2>&1; then
    log "installing rustup component $2"
    rustup component add "$2"
  fi
}

need_cargo_component fmt rustfmt
need_cargo_component clippy clippy

# The etcd store's tests start real etcd processes (Debian's etcd-server 3.4) on free loopback
# ports; without the binary they fail, on purpose. The package may start a system etcd on 2379:
# harmless, the tests never use that port.
if ! command -v etcd >/dev/null 2>&1; then
  log "installing etcd-server (for the etcd store's tests)"
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then as_root=(sudo); fi
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server
fi

# The hostile-client tests drive curl (a client nobody here wrote) against the sidecars.
if ! command -v curl >/dev/null 2>&1; then
  log "installing curl (for the hostile-client tests)"
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then as_root=(sudo); fi
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y curl
fi

# The HTTP-hop tests (crates/trellis/tests/http_hops.rs) put Python's http.server, an
# HTTP/1.1-only app nobody here wrote, behind a sidecar (and drive curl, installed above).
if ! command -v python3 >/dev/null 2>&1; then
  log "installing python3 (for the HTTP-hop tests)"
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then as_root=(sudo); fi
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y python3
fi

# The chaos tests (crates/trellis/tests/chaos.rs) build hosts from network namespaces with `ip`
# and partition them with `iptables` (capture.rs and up_hosts.rs need both too); without either
# they fail, on purpose, naming what is missing.
if ! command -v ip >/dev/null 2>&1 || ! command -v iptables >/dev/null 2>&1; then
  log "installing iproute2 and iptables (for the chaos tests)"
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then as_root=(sudo); fi
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y iproute2 iptables
fi

# The transparent-sidecar tests (crates/trellis/tests/capture_mesh.rs) reach a real redis-server
# by name with an unmodified redis-cli through captured sidecars.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  log "installing redis-server and redis-tools (for the transparent-sidecar tests)"
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then as_root=(sudo); fi
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools
fi

# The metrics-format test (crates/trellis/tests/metrics_formats.rs) checks what /metrics serves
# with `promtool check metrics`, from Debian's prometheus package.
if ! command -v promtool >/dev/null 2>&1; then
  log "installing prometheus (promtool, for the metrics-format test)"
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then as_root=(sudo); fi
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
fi

# The gRPC error tests (crates/trellis/tests/grpc_errors.rs) call through the sidecars with
# Python's grpcio, a gRPC client nobody here wrote. pip where there is one (a venv-less Debian
# python refuses plain installs: PEP 668, hence the fallback), else Debian's own package.
if ! python3 -c 'import grpc' >/dev/null 2>&1; then
  log "installing grpcio (for the gRPC error tests)"
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then as_root=(sudo); fi
  if ! command -v python3 >/dev/null 2>&1; then
    "${as_root[@]}" apt-get update
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y python3
  fi
  if python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip install --quiet grpcio \
      || python3 -m pip install --quiet --break-system-packages grpcio
  fi
  if ! python3 -c 'import grpc' >/dev/null 2>&1; then
    "${as_root[@]}" apt-get update
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-grpcio
  fi
fi

# The tracing test (crates/trellis/tests/tracing_otel.rs) runs apps instrumented with the
# OpenTelemetry Python SDK and an OTLP/gRPC receiver built from its protocol package.
if ! python3 -c 'import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc, opentelemetry.proto' >/dev/null 2>&1; then
  log "installing the OpenTelemetry Python SDK and OTLP exporter (for the tracing test)"
  python3 -m pip install --quiet opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc \
    || python3 -m pip install --quiet --break-system-packages opentelemetry-sdk \
      opentelemetry-exporter-otlp-proto-grpc
fi

# The dashboard test (crates/trellis/tests/dashboard.rs) drives Debian's chromium through
# chromedriver with Selenium: the real browser, headless.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  log "installing chromium and chromium-driver (for the dashboard test)"
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then as_root=(sudo); fi
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver
fi
if ! python3 -c 'import selenium' >/dev/null 2>&1; then
  log "installing selenium (for the dashboard test)"
  python3 -m pip install --quiet selenium \
    || python3 -m pip install --quiet --break-system-packages selenium
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "the proxy's modules form layers (no import circles)"
bash scripts/module-circles.sh

log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

# The README's first command is `cargo run --release -- up ...`: with more than one binary in the
# workspace, `cargo run` must still know which one to run.
log "cargo run picks the trellis binary"
cargo run --quiet -- --version

# Every test's scratch files (etcd data directories, certificates, logs) go under one directory
# that is removed when the run ends, pass or fail, so repeated runs never fill the disk.
scratch="$(mktemp -d "${TMPDIR:-/tmp}/trellis-tests.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
export TMPDIR="$scratch"

log "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
