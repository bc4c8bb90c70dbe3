#!/usr/bin/env python3
"""A/B two Trellis builds on the sidecar pair (or `--topology trellis-1hop`), interleaved round by round, so an optimization
can be judged on this noisy machine:

    python3 bench/ab.py --a target/release/trellis --b /tmp/other/trellis [--rounds 5] [--secs 10]

Prints, per build, the medians of: max req/s (wrk), p50/p99 at 1000 req/s (oha), CPU s per 1000
requests of the busier proxy (user+sys), idle and peak RSS, and the binary's size.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import harness as h


def measure(tools: h.Tools, work: Path, port: int, secs: int, topology: str) -> dict:
    s = h.Settings(secs=secs, rate=1000, conns=64, wrk_threads=2, max_tool="wrk", h2_secs=0,
                   h2_streams=0, warmup_secs=1, settle=0.3)
    res = h.measure_h1(topology, tools, work, port, s)
    px = res["proxies"].values()
    return {"max_rps": res["max"]["rps"], "p50": res["fixed"]["p50"],
            "p99": res["fixed"]["p99"],
            "cpu": max(v["cpu_s_per_1k"] for v in px),
            "user": max(v["user_s_per_1k"] for v in px),
            "sys": max(v["sys_s_per_1k"] for v in px),
            "cpu_at_max": max(v["cpu_s_per_1k_at_max"] for v in px),
            "idle_mb": max(v["idle_rss_kb"] for v in px) / 1024,
            "peak_mb": max(v["peak_rss_kb"] for v in px) / 1024,
            "other": max(res["fixed"]["other_load"], res["max"]["other_load"])}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--topology", default="trellis-pair",
                    choices=["trellis-pair", "trellis-1hop", "trellis-pair-mtls"])
    a = ap.parse_args()
    if a.nice:
        os.setpriority(os.PRIO_PROCESS, 0, a.nice)
    work = Path(tempfile.mkdtemp(prefix="trellis-ab-"))
    builds = {}
    for label, path in (("A", a.a), ("B", a.b)):
        (work / label).mkdir()
        builds[label] = h.find_tools(path, work / label)
    nginx, port, _ = h.start_nginx(builds["A"], work)
    results = {"A": [], "B": []}
    try:
        for r in range(a.rounds):
            for label in (("A", "B") if r % 2 == 0 else ("B", "A")):
                m = measure(builds[label], work, port, a.secs, a.topology)
                results[label].append(m)
                print(f"round {r + 1} {label}: " + " ".join(f"{k}={v:.3f}" for k, v in m.items()),
                      flush=True)
    finally:
        h.stop(nginx)
    print()
    for label, path in (("A", a.a), ("B", a.b)):
        med = {k: h.med([m[k] for m in results[label]]) for k in results[label][0]}
        size = Path(path).stat().st_size / 1e6
        print(f"{label} ({path}, {size:.1f} MB): "
              + " ".join(f"{k}={v:.3f}" for k, v in med.items()))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
