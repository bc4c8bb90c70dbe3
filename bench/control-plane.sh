#!/usr/bin/env bash
# Control-plane scale: (1) time from a change to every proxy's ACK with N simulated proxies
# (real xDS clients, one connection each) for N = 100 and 1000; (2) the control plane killed
# (SIGKILL) and restarted on the same port and data dir: time until every proxy has reconnected
# and applied a change made right after the restart; (3) control-plane RSS holding 1000 services
# and 10 000 endpoints. Loopback only; every process is stopped by PID.
# Usage: bash bench/control-plane.sh [--rounds R] [--restart-rounds R]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=30
# Each restart round keeps the control plane down for seconds, so fewer of them.
restart_rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="${2:?--rounds needs a value}"; shift 2 ;;
    --restart-rounds) restart_rounds="${2:?--restart-rounds needs a value}"; shift 2 ;;
    *) echo "usage: bash bench/control-plane.sh [--rounds R] [--restart-rounds R]" >&2; exit 2 ;;
  esac
done

echo "==> building (release)"
cargo build --release -p trellis >/dev/null
cargo build --release -p trellis-xds --example xds_scale >/dev/null
cargo build --release -p trellis-control --example control_scale --example control_restart >/dev/null

echo "==> apply (HTTP API) -> store -> views -> xDS -> every proxy applied, real control plane"
target/release/examples/control_scale --clients 100,1000 --rounds "$rounds"

echo "==> control plane restarted -> every proxy reconnected and in sync"
# Down 3 s, and 8 s: longer than the proxies' 5 s reconnect-backoff cap.
target/release/examples/control_restart --clients 100,1000 --rounds "$restart_rounds" --down 3,8 \
  --trellis target/release/trellis

echo "==> transport alone: new view -> every proxy's ACK, delta and state of the world"
for mode in delta sotw; do
  target/release/examples/xds_scale --clients 100,1000 --rounds "$rounds" --mode "$mode"
done

echo "==> control-plane RSS with 1000 services and 10000 endpoints"
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/trellis control --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/cp.log" 2>&1 &
cp_pid=$!
trap 'kill $cp_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/api/v1/health" >/dev/null 2>&1 && break; sleep 0.05; done
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$cp_pid/status"; }
echo "idle RSS: $(rss) MB"
python3 - "$work/mesh.yaml" <<'PY'
import sys
out = []
for s in range(1000):
    out.append(f"""apiVersion: trellis.dev/v1
kind: Service
metadata: {{name: svc-{s}}}
spec: {{ports: [{{port: 80, protocol: http}}]}}""")
    for w in range(10):
        out.append(f"""apiVersion: trellis.dev/v1
kind: Workload
metadata: {{name: svc-{s}-{w}, labels: {{version: v{w % 2}}}}}
spec: {{service: svc-{s}, address: 10.{s // 250}.{s % 250}.{w + 1}, port: 8080}}""")
open(sys.argv[1], "w").write("\n---\n".join(out) + "\n")
PY
start=$(date +%s.%N)
target/release/trellis apply --control "http://127.0.0.1:$port" --token-file "$work/data/join-token" -f "$work/mesh.yaml" >/dev/null
end=$(date +%s.%N)
sleep 1
echo "applied 11000 resources in $(python3 -c "print(round($end-$start,1))") s"
echo "loaded RSS: $(rss) MB (peak $(awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/$cp_pid/status) MB)"
