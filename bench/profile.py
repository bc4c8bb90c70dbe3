#!/usr/bin/env python3
"""Profiles the Trellis sidecar pair under load with `perf record` (cpu-clock sampling) and
writes the top symbols to bench/profile.md, which harness.py appends to RESULTS.md.

    python3 bench/profile.py --trellis target/release/trellis [--secs 8] [--load fixed|max]

Needs `perf` (linux-perf). Virtual machines often lack hardware counters; the software
`cpu-clock` event works there. Self time per symbol, both proxies of the pair together.
"""
from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness as h

TOP = 25


def perf_record(pids: list[int], secs: int, data: Path) -> subprocess.Popen:
    argv = ["perf", "record", "-e", "cpu-clock", "-F", "1999", "-o", str(data),
            "-p", ",".join(map(str, pids)), "--", "sleep", str(secs)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def perf_top_symbols(data: Path, sort: str) -> list[tuple[float, str]]:
    r = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                        "--sort", sort, "--percent-limit", "0.3"],
                       capture_output=True, text=True, timeout=120)
    rows = []
    for line in r.stdout.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(.*)", line)
        if m:
            rows.append((float(m.group(1)), " ".join(m.group(2).split())))
    return rows


def demangle_short(sym: str, width: int = 110) -> str:
    sym = re.sub(r"::h[0-9a-f]{16}", "", sym)
    return sym if len(sym) <= width else sym[: width - 1] + "…"


def strace_counts(tools: h.Tools, work: Path, port: int, name: str, secs: int) -> dict:
    """Syscalls per request of each proxy of topology `name` at a fixed 1000 req/s."""
    topo = h.build_topology(name, tools, work, port, h2=False)
    try:
        h.check_ok(topo.url)
        h.oha_fixed(tools, topo.url, 1, 1000, 64)  # warm-up: pools and connections made
        tracers = {}
        for px in topo.proxies:
            out = work / f"strace-{px.name}.txt"
            tracers[px.name] = (subprocess.Popen(
                ["strace", "-c", "-f", "-o", str(out), "-p", str(px.proc.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True), out)
        time.sleep(0.5)
        load = h.oha_fixed(tools, topo.url, secs, 1000, 64)
        for tr, _ in tracers.values():
            tr.send_signal(signal.SIGINT)
            tr.wait(timeout=30)
    finally:
        h.teardown(topo)
    requests = load["ok"] + load["non200"]
    return {px: parse_strace(out.read_text(), requests) for px, (_, out) in tracers.items()}


def parse_strace(text: str, requests: int) -> dict:
    calls = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and not line.lstrip().startswith("100.00"):
            calls[f[-1]] = int(f[3])
    return {"per_request": {k: v / requests for k, v in
                            sorted(calls.items(), key=lambda kv: -kv[1])[:8]},
            "total_per_request": sum(calls.values()) / requests}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trellis", required=True)
    ap.add_argument("--secs", type=int, default=8)
    ap.add_argument("--load", default="fixed,max",
                    help="fixed (1000 req/s, where the CPU target is) and/or max (wrk)")
    ap.add_argument("--no-syscalls", action="store_true", help="skip the strace comparison")
    ap.add_argument("--out", default=str(h.BENCH_DIR / "profile.md"))
    ap.add_argument("--topology", default="trellis-pair",
                    choices=["trellis-pair", "trellis-1hop", "trellis-pair-mtls"])
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trellis-prof-"))
    tools = h.find_tools(a.trellis, work)
    nginx, port, _ = h.start_nginx(tools, work)
    try:
        perf = {kind: perf_pair(tools, work, port, a.secs, kind, a.topology)
                for kind in a.load.split(",")}
        syscalls = {}
        if not a.no_syscalls and shutil.which("strace"):
            for name in ("trellis-pair", "envoy-pair"):
                syscalls[name] = strace_counts(tools, work, port, name, min(a.secs, 5))
    finally:
        h.stop(nginx)
    write(Path(a.out), a, perf, syscalls)
    print(Path(a.out).read_text())
    shutil.rmtree(work, ignore_errors=True)
    return 0


def perf_pair(tools: h.Tools, work: Path, port: int, secs: int, kind: str,
              topology: str) -> tuple:
    """perf record on every proxy of `topology` (the Trellis pair by default) while loaded."""
    data = work / "perf.data"
    topo = h.build_topology(topology, tools, work, port, h2=False)
    try:
        h.check_ok(topo.url)
        h.wrk_max(tools, topo.url, 1, 1, 16)  # warm-up
        rec = perf_record([px.proc.pid for px in topo.proxies], secs + 1, data)
        time.sleep(0.5)
        if kind == "max":
            load = h.wrk_max(tools, topo.url, secs, 2, 64)
        else:
            load = h.oha_fixed(tools, topo.url, secs, 1000, 64)
        rec.communicate(timeout=secs + 60)
    finally:
        h.teardown(topo)
    return load, perf_top_symbols(data, "dso"), perf_top_symbols(data, "dso,sym")


def write(path: Path, a, perf: dict, syscalls: dict) -> None:
    out = ["## Profile", "",
           f"`python3 bench/profile.py --trellis target/release/trellis --secs {a.secs} "
           f"--topology {a.topology}`: `perf record -e cpu-clock -F 1999` on the proxies of "
           f"{a.topology} (self time, all its proxies together), then syscall counts of both "
           "pairs.", ""]
    for kind, (load, by_dso, by_sym) in perf.items():
        desc = (f"wrk -t2 -c64 -d{a.secs}s at max ({load['rps']:.0f} req/s)" if kind == "max"
                else f"oha -q 1000 -c 64 -z {a.secs}s ({load['rps']:.0f} req/s)")
        out += [f"### {a.topology} under {desc}", "",
                "By object: " + ", ".join(f"{s} {p:.1f}%" for p, s in by_dso[:6]), "",
                f"Top {TOP} symbols:", "", "| % | symbol |", "|---|---|",
                *[f"| {p:.1f} | `{demangle_short(s)}` |" for p, s in by_sym[:TOP]], ""]
    if syscalls:
        out += ["Syscalls per request at a fixed 1000 req/s (`strace -c -f`, which slows the "
                "process, so only the counts mean anything):", "",
                "| proxy | total per request | top calls per request |", "|---|---|---|"]
        for topo, procs in syscalls.items():
            for px, c in procs.items():
                top = ", ".join(f"{k} {v:.2f}" for k, v in c["per_request"].items())
                out.append(f"| {topo} {px} | {c['total_per_request']:.2f} | {top} |")
        out.append("")
    path.write_text("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
