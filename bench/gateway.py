#!/usr/bin/env python3
"""`trellis gateway` against Envoy as the same HTTPS ingress gateway, and against no gateway.

Topologies (loopback; backend nginx with one worker answering `ok`, as bench/harness.py):
    direct           load -> nginx (plaintext)
    trellis-gateway  load -(HTTPS)-> trellis gateway -> nginx
    envoy-gateway    load -(HTTPS)-> envoy -> nginx

Both gateways terminate TLS (one ECDSA P-256 certificate made with openssl for the run; ALPN h2
and http/1.1) and have one route for any host to one backend, on one worker thread
(`trellis gateway --workers 1`, `envoy --concurrency 1`). The Trellis gateway is configured the
way a user would: a control plane (`trellis control`) holding a Gateway, an HTTPRoute, the
backend Service and a Workload for nginx (no identity, so the hop to nginx is plaintext, as
Envoy's is); the gateway joins with the join token and reads its certificate from --cert-dir.

Figures per topology and round (all topologies measured in each round, the order rotating):
    max req/s          wrk -t2 -c64 (HTTP/1.1 keep-alive), closed loop
    p50/p99 at a rate  oha at a fixed rate (--rate, default 1000 req/s), latency correction on;
                       "added p99" is the topology's p99 less direct's p99 of the same round
    CPU per 1000 req   utime+stime of the gateway process over the fixed-rate run

Options: --rounds, --duration (seconds per load run), --nice (run everything at this nice
value), --wait-quiet SECONDS (wait at most this long before each round for the 1-minute load
average to fall below --quiet-below). Every process started is stopped by PID; every load run
is bounded. Numbers are printed and written as JSON (--out); nothing asserts on them.

    python3 bench/gateway.py --trellis target/release/trellis --rounds 5 --duration 10 \
        --nice -10 --wait-quiet 120
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ left in bench/
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402  (spawn, stop, wrk_max, cpu_times, ... and their cleanup)

TOPOLOGIES = ["direct", "trellis-gateway", "envoy-gateway"]
TOKEN = "bench-join-token-0123456789abcdef"
HOST = "bench.example.com"


def make_cert(d: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for HOST, as a mounted TLS Secret d/bench-cert/."""
    s = d / "certs" / "bench-cert"
    s.mkdir(parents=True, exist_ok=True)
    crt, key = s / "tls.crt", s / "tls.key"
    h.openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
              "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN={HOST}",
              "-addext", f"subjectAltName=DNS:{HOST}")
    return crt, key


def get_ok(url: str, limit: float = 20.0) -> None:
    """Waits (bounded) for one 200 `ok` through `url`; raises with the last answer otherwise."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    t0, last = time.monotonic(), ""
    while time.monotonic() - t0 < limit:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                body = r.read()
                if r.status == 200 and body.strip() == b"ok":
                    return
                last = f"{r.status} {body[:100]!r}"
        except Exception as e:  # not up yet
            last = str(e)
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 ok within {limit}s: {last}")


def start_trellis_gateway(tools: h.Tools, work: Path, backend: int) -> tuple[h.Proxy, list]:
    """A control plane holding the Gateway and its route, and the gateway serving it."""
    env = dict(os.environ, TRELLIS_TOKEN=TOKEN)
    control, port, admin = h.free_port(), h.free_port(), h.free_port()
    cp = h.spawn([tools.trellis, "--log", "warn", "control", "--listen", f"127.0.0.1:{control}",
                  "--data-dir", str(work / "control-data")], work / "control.log", env=env)
    h.wait_ready(cp, control, "/api/v1/health", time.perf_counter(), limit=30)
    manifest = work / "gateway.yaml"
    manifest.write_text(f"""apiVersion: trellis.dev/v1
kind: Service
metadata: {{name: backend}}
spec: {{ports: [{{port: 80, protocol: http}}]}}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {{name: nginx-1, labels: {{app: backend}}}}
spec: {{service: backend, address: 127.0.0.1, port: {backend}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: bench}}
spec:
  gatewayClassName: trellis
  listeners:
    - name: https
      port: {port}
      protocol: HTTPS
      tls: {{mode: Terminate, certificateRefs: [{{name: bench-cert}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: backend}}
spec:
  parentRefs: [{{name: bench}}]
  rules:
    - backendRefs: [{{name: backend, port: 80}}]
""")
    r = subprocess.run([tools.trellis, "apply", "-f", str(manifest)], env=dict(
        env, TRELLIS_CONTROL=f"http://127.0.0.1:{control}"), capture_output=True, text=True,
        timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"trellis apply failed: {r.stderr}")
    t0 = time.perf_counter()
    gw = h.spawn([tools.trellis, "--log", "warn", "gateway", "--gateway", "bench",
                  "--control", f"http://127.0.0.1:{control}", "--address", "127.0.0.1",
                  "--cert-dir", str(work / "certs"), "--admin", f"127.0.0.1:{admin}",
                  "--workers", "1"], work / "trellis-gateway.log", env=env)
    ready = h.wait_ready(gw, admin, "/ready", t0, limit=30)
    url = f"https://127.0.0.1:{port}/"
    get_ok(url)
    return h.Proxy("trellis-gateway", gw, ready), [cp, url]


def start_envoy_gateway(tools: h.Tools, work: Path, backend: int, crt: Path, key: Path):
    port, admin = h.free_port(), h.free_port()
    cfg = h.render("envoy-gateway.yaml", work / "envoy-gateway.yaml", LISTEN_PORT=port,
                   ADMIN_PORT=admin, UPSTREAM_PORT=backend, CERT=crt, KEY=key)
    px = h.start_envoy(tools, work, "envoy-gateway", cfg, admin)
    url = f"https://127.0.0.1:{port}/"
    get_ok(url)
    return px, url


def oha_fixed(tools: h.Tools, url: str, secs: int, rate: int, conns: int) -> dict:
    """h.oha_fixed, with certificate checks off (the certificate is the run's own)."""
    argv = [tools.oha, "-z", f"{secs}s", "-q", str(rate), "-c", str(conns), "--insecure",
            "--latency-correction", "--no-tui", "--output-format", "json", url]
    r = h.run_bounded(argv, secs + 30)
    if r.returncode != 0:
        raise RuntimeError(f"oha failed: {r.stderr[-500:]}")
    j = json.loads(r.stdout)
    pct = j["latencyPercentiles"]
    codes = {str(k): v for k, v in j.get("statusCodeDistribution", {}).items()}
    return {"p50": pct["p50"] * 1e3, "p99": pct["p99"] * 1e3,
            "requests": sum(codes.values()), "non200": sum(codes.values()) - codes.get("200", 0),
            "errors": h.oha_errors(j)}


def wrk_latency(tools: h.Tools, url: str, secs: int) -> dict:
    """Without oha: wrk closed-loop on 8 connections with --latency (not a fixed rate: the
    percentiles are under a different load, and say so in the output)."""
    r = h.run_bounded([tools.wrk, "-t1", "-c8", f"-d{secs}s", "--latency", url], secs + 30)
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed: {r.stderr[-500:]}")
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", r.stdout, re.M)
        return float(m.group(1)) * unit[m.group(2)] if m else float("nan")

    total = int(re.search(r"(\d+) requests in", r.stdout).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", r.stdout)
    return {"p50": pct("50"), "p99": pct("99"), "requests": total,
            "non200": int(non2xx.group(1)) if non2xx else 0, "errors": 0,
            "tool": "wrk -c8 closed loop (oha missing)"}


def measure(name: str, url: str, proxy: h.Proxy | None, tools: h.Tools, a) -> dict:
    before = h.cpu_times(proxy.proc.pid) if proxy else (0.0, 0.0)
    with h.OtherLoad(h.BACKEND_PIDS + ([proxy.proc.pid] if proxy else [])) as other:
        if tools.oha:
            fixed = oha_fixed(tools, url, a.duration, a.rate, a.conns)
        else:
            fixed = wrk_latency(tools, url, a.duration)
    res = {"fixed": fixed, "other_load": other.cores}
    if proxy:
        (u0, s0), (u1, s1) = before, h.cpu_times(proxy.proc.pid)
        res["cpu_s_per_1k"] = (u1 - u0 + s1 - s0) / max(fixed["requests"] / 1000, 1e-9)
    time.sleep(a.settle)
    res["max"] = h.wrk_max(tools, url, a.duration, 2, a.conns)
    return res


def summarize(rounds: list[dict]) -> dict:
    out = {}
    for name in TOPOLOGIES:
        rs = [r["topologies"][name] for r in rounds]
        med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
        out[name] = {
            "max_rps": med([r["max"]["rps"] for r in rs]),
            "p50_ms": med([r["fixed"]["p50"] for r in rs]),
            "p99_ms": med([r["fixed"]["p99"] for r in rs]),
            "added_p99_ms": med([r["fixed"]["p99"] - rd["topologies"]["direct"]["fixed"]["p99"]
                                 for r, rd in zip(rs, rounds)]),
            "cpu_s_per_1k": med([r["cpu_s_per_1k"] for r in rs if "cpu_s_per_1k" in r]),
            "errors": sum(r["fixed"]["non200"] + r["fixed"]["errors"] + r["max"]["non2xx"]
                          + r["max"]["socket_errors"] for r in rs),
        }
    t, e = out["trellis-gateway"], out["envoy-gateway"]
    out["trellis/envoy"] = {
        "max_rps": h.safe_div(t["max_rps"], e["max_rps"]),
        "added_p99": h.safe_div(t["added_p99_ms"], e["added_p99_ms"]),
        "cpu_per_1k": h.safe_div(t["cpu_s_per_1k"], e["cpu_s_per_1k"]),
    }
    return out


def table(summary: dict) -> str:
    lines = ["| topology | max req/s | p50 ms | p99 ms | added p99 ms | CPU s / 1000 req | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in TOPOLOGIES:
        s = summary[name]
        lines.append(f"| {name} | {s['max_rps']:.0f} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | "
                     f"{s['added_p99_ms']:.3f} | {s['cpu_s_per_1k']:.4f} | {s['errors']} |")
    r = summary["trellis/envoy"]
    lines.append(f"\ntrellis/envoy: max req/s x{r['max_rps']:.2f}, added p99 x{r['added_p99']:.2f}, "
                 f"CPU per 1000 requests x{r['cpu_per_1k']:.2f}")
    return "\n".join(lines)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trellis", default=str(h.BENCH_DIR.parent / "target/release/trellis"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run")
    ap.add_argument("--rate", type=int, default=1000, help="fixed rate for latency and CPU")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--nice", type=int, default=0, help="run everything at this nice value")
    ap.add_argument("--wait-quiet", type=float, default=0,
                    help="before each round wait at most this long for a quiet machine")
    ap.add_argument("--quiet-below", type=float, default=1.0,
                    help="1-minute load average that counts as quiet")
    ap.add_argument("--out", default=str(h.BENCH_DIR / "gateway-results.json"))
    return ap.parse_args()


def main() -> int:
    a = parse_args()
    if a.nice:
        os.setpriority(os.PRIO_PROCESS, 0, a.nice)  # inherited by every process started
    work = Path(tempfile.mkdtemp(prefix="trellis-gateway-bench-"))
    tools = h.find_tools(a.trellis, work, need=("trellis", "envoy", "nginx", "wrk"))
    if not os.access(tools.oha, os.X_OK):
        print("oha not found (bench/run.sh installs it): latency and CPU figures come from a "
              "closed-loop wrk run instead of a fixed rate", flush=True)
        tools.oha = ""
    crt, key = make_cert(work)
    nginx, backend, _ = h.start_nginx(tools, work)
    try:
        gw, (cp, gw_url) = start_trellis_gateway(tools, work, backend)
        envoy, envoy_url = start_envoy_gateway(tools, work, backend, crt, key)
        urls = {"direct": (f"http://127.0.0.1:{backend}/", None),
                "trellis-gateway": (gw_url, gw), "envoy-gateway": (envoy_url, envoy)}
        rounds = []
        for r in range(a.rounds):
            h.wait_for_quiet(a.wait_quiet, a.quiet_below)
            order = TOPOLOGIES[r % 3:] + TOPOLOGIES[:r % 3]
            rnd = {"round": r + 1, "loadavg": h.loadavg(), "order": order, "topologies": {}}
            print(f"round {r + 1}/{a.rounds}  loadavg {rnd['loadavg']}", flush=True)
            for name in order:
                url, px = urls[name]
                res = measure(name, url, px, tools, a)
                rnd["topologies"][name] = res
                cpu = f" cpu/1k={res['cpu_s_per_1k']:.4f}s" if "cpu_s_per_1k" in res else ""
                print(f"  {name:16s} max={res['max']['rps']:.0f}/s p50={res['fixed']['p50']:.3f} "
                      f"p99={res['fixed']['p99']:.3f}ms{cpu} other-load={res['other_load']:.2f}",
                      flush=True)
            rounds.append(rnd)
        summary = summarize(rounds)
        print(table(summary))
        meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(), "rounds": a.rounds,
                "duration_s": a.duration, "rate": a.rate, "conns": a.conns, "nice": a.nice,
                "machine": h.machine_info()}
        Path(a.out).write_text(json.dumps({"meta": meta, "summary": summary, "rounds": rounds},
                                          indent=1))
        print(f"wrote {a.out}")
    finally:
        h.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
