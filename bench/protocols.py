#!/usr/bin/env python3
"""Protocol rows of the Trellis benchmark, beside harness.py's throughput and latency figures:

server-first TCP connection setup
    A server-first app (it greets on accept, then answers `PING n` with `PONG n`, as MySQL or
    SMTP servers do) on a port declared `tcp`; a client opens N connections one after another
    and times, per connection, connect -> greeting received, and connect -> greeting, one
    PING/PONG, close. Topologies: direct, trellis-pair (Permissive, no certificates),
    trellis-pair-mtls (Strict, mutual TLS 1.3 between the sidecars), envoy-pair (tcp_proxy on
    both sides). Before the fix in `proxy-protocols` every Trellis connection here waited for the
    detection timeout (5 s) before the greeting.

HTTP/2 caller -> HTTP/1.1 app
    h2load (HTTP/2 prior knowledge) through each pair to nginx's HTTP/1.1-only port, the port
    declared `http`: both sidecars translate (before: 502 for every request). Baseline: h2load
    `--h1` straight at the same nginx port (the app only speaks HTTP/1.1). Envoy's pairs
    translate the same way (codec AUTO downstream, HTTP/1.1 upstream).

Rounds are interleaved (the order rotates), medians are reported, every process is stopped by
PID. Writes PROTOCOLS.md and protocols.json next to RESULTS.md.

    python3 bench/protocols.py --trellis target/release/trellis [--quick] [--rounds N]
"""
from __future__ import annotations

import argparse
import re
import json
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import harness as h

GREETER = r"""
import asyncio, sys

async def handle(r, w):
    w.write(b"220 bench greeter ready\r\n")
    await w.drain()
    while True:
        line = await r.readline()
        if not line:
            break
        w.write(b"PONG " + line[5:] if line.startswith(b"PING ") else b"500 what\r\n")
        await w.drain()
    w.close()

async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with srv:
        await srv.serve_forever()

asyncio.run(main())
"""

SERVER_FIRST = ["direct", "trellis-pair", "trellis-pair-mtls", "envoy-pair"]
H2_TO_H1 = ["direct-h1", "trellis-pair", "envoy-pair", "trellis-pair-mtls", "envoy-pair-mtls"]


@dataclass
class TcpTopology:
    name: str
    port: int
    proxies: list


def start_greeter(work: Path) -> tuple:
    port = h.free_port()
    script = work / "greeter.py"
    script.write_text(GREETER)
    p = h.spawn([sys.executable, str(script), str(port)], work / "greeter.log")
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return p, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("the greeter never listened")


def envoy_tcp_config(work: Path, name: str, listen: int, admin: int, upstream: int) -> Path:
    return h.render("envoy-tcp.yaml", work / f"{name}.envoy.yaml",
                    LISTEN_PORT=listen, ADMIN_PORT=admin, UPSTREAM_PORT=upstream)


def tcp_topology(name: str, tools, work: Path, app: int) -> TcpTopology:
    """The proxies of `name` in front of the greeter on `app` (server side first)."""
    if name == "direct":
        return TcpTopology(name, app, [])
    entry, proxies = h.free_port(), []
    try:
        if name in ("trellis-pair", "trellis-pair-mtls"):
            inbound = h.free_port()
            mtls = name.endswith("-mtls")
            cfg = (h.trellis_mtls_config(work, name, inbound, "tcp") if mtls
                   else h.trellis_config(work, name, inbound, "tcp"))
            certs = h.mtls_certs(work) if mtls else None
            proxies.append(h.start_trellis(tools, work, "trellis-b", [
                "--config", str(cfg), "--service", "backend", "--outbound", "off",
                "--inbound", f"127.0.0.1:{inbound}", "--app", f"127.0.0.1:{app}",
                *(certs.trellis_args("server") if certs else [])], h.free_port()))
            proxies.append(h.start_trellis(tools, work, "trellis-a", [
                "--config", str(cfg), "--service", "client", "--outbound", "off",
                "--upstream", f"backend=127.0.0.1:{entry}",
                *(certs.trellis_args("client") if certs else [])], h.free_port()))
            if certs:
                h.check_mtls_server(inbound, certs)
        elif name == "envoy-pair":
            mid, admin_b, admin_a = h.free_port(), h.free_port(), h.free_port()
            proxies.append(h.start_envoy(tools, work, "envoy-b",
                                         envoy_tcp_config(work, "envoy-b", mid, admin_b, app),
                                         admin_b))
            proxies.append(h.start_envoy(tools, work, "envoy-a",
                                         envoy_tcp_config(work, "envoy-a", entry, admin_a, mid),
                                         admin_a))
        else:
            raise ValueError(f"unknown topology {name}")
        return TcpTopology(name, entry, proxies)
    except BaseException:
        for px in proxies:
            h.stop(px.proc)
        raise


def read_line(f) -> bytes:
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise OSError(f"connection ended after {line!r}")
    return line


def server_first_setup(port: int, n: int) -> dict:
    """`n` sequential connections: ms to the greeting, and to greeting + PING/PONG + close."""
    greet, full, errors = [], [], 0
    for i in range(n):
        t0 = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                f = s.makefile("rb")
                if not read_line(f).startswith(b"220 "):
                    raise OSError("not the greeting")
                t1 = time.perf_counter()
                s.sendall(f"PING {i}\r\n".encode())
                if read_line(f) != f"PONG {i}\r\n".encode():
                    raise OSError("not the answer")
        except OSError:
            errors += 1
            continue
        t2 = time.perf_counter()
        greet.append((t1 - t0) * 1e3)
        full.append((t2 - t0) * 1e3)
    return {"greeting_ms": percentiles(greet), "exchange_ms": percentiles(full),
            "connections": n, "errors": errors}


def percentiles(xs: list[float]) -> dict:
    if not xs:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    xs = sorted(xs)
    at = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return {"p50": statistics.median(xs), "p90": at(0.9), "p99": at(0.99)}


def h2_to_h1(name: str, tools, work: Path, h1_port: int, secs: int, conns: int,
             streams: int) -> dict:
    if name == "direct-h1":
        argv = [tools.h2load, "--h1", "-D", str(secs), "-c", str(conns), "-t", "1",
                f"http://127.0.0.1:{h1_port}/"]
        r = h.run_bounded(argv, secs + 30)
        m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", r.stdout)
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", r.stdout)
        if not m:
            raise RuntimeError(f"h2load --h1 failed: {r.stdout[-500:]} {r.stderr[-500:]}")
        return {"rps": float(m.group(1)),
                "non2xx": sum(int(x) for x in codes.groups()[1:]) if codes else -1}
    topo = h.build_topology(name, tools, work, h1_port, h2=False)
    try:
        time.sleep(0.3)
        return h.h2load_max(tools, topo.url, secs, conns, streams)
    finally:
        h.teardown(topo)


def med(rounds: list[dict], *path) -> float:
    vals = []
    for r in rounds:
        v = r
        for p in path:
            v = v.get(p, {}) if isinstance(v, dict) else {}
        if isinstance(v, (int, float)) and v == v:
            vals.append(v)
    return statistics.median(vals) if vals else float("nan")


def report(meta: dict, sf: dict, h2: dict) -> str:
    lines = ["# Trellis benchmark: protocol rows", "",
             f"{meta['date']}, {meta['rounds']} round(s), loadavg at start {meta['loadavg']}. "
             f"Command: `{meta['command']}`. Medians over rounds; see bench/protocols.py for "
             "what each row measures.", "",
             f"## Server-first TCP connection setup ({meta['connections']} sequential "
             "connections per round, port declared `tcp`)", "",
             "| topology | greeting p50 | p90 | p99 | greeting + PING/PONG + close p50 | p99 "
             "| errors |", "|---|---|---|---|---|---|---|"]
    for name, rs in sf.items():
        lines.append(
            f"| {name} | {med(rs, 'greeting_ms', 'p50'):.2f} ms | "
            f"{med(rs, 'greeting_ms', 'p90'):.2f} ms | {med(rs, 'greeting_ms', 'p99'):.2f} ms | "
            f"{med(rs, 'exchange_ms', 'p50'):.2f} ms | {med(rs, 'exchange_ms', 'p99'):.2f} ms | "
            f"{sum(r['errors'] for r in rs)} |")
    lines += ["", f"## HTTP/2 caller -> HTTP/1.1 app (h2load, {meta['h2_conns']} connections x "
              f"{meta['h2_streams']} streams, {meta['h2_secs']} s; nginx HTTP/1.1 port declared "
              "`http`)", "", "| topology | req/s | non-2xx |", "|---|---|---|"]
    for name, rs in h2.items():
        label = "direct (h2load --h1)" if name == "direct-h1" else name
        lines.append(f"| {label} | {med(rs, 'rps'):.0f} | "
                     f"{sum(int(r.get('non2xx', 0)) for r in rs)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trellis", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 round, fewer connections, 3 s runs")
    ap.add_argument("--connections", type=int, default=300)
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--out", default=str(h.BENCH_DIR))
    ap.add_argument("--command", default="")
    a = ap.parse_args()
    if a.quick:
        a.connections = min(a.connections, 100)
        a.secs = min(a.secs, 3)
        if "--rounds" not in sys.argv:
            a.rounds = 1
    work = Path(tempfile.mkdtemp(prefix="trellis-bench-protocols-"))
    tools = h.find_tools(a.trellis, work, need=("trellis", "envoy", "nginx", "h2load"))
    h.mtls_certs(work)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": a.rounds,
            "loadavg": h.loadavg(), "connections": a.connections, "h2_secs": a.secs,
            "h2_conns": 16, "h2_streams": 10, "command": a.command or " ".join(sys.argv)}
    sf: dict = {n: [] for n in SERVER_FIRST}
    h2: dict = {n: [] for n in H2_TO_H1}
    try:
        greeter, app = start_greeter(work)
        nginx, h1_port, _ = h.start_nginx(tools, work)
        for r in range(a.rounds):
            print(f"round {r + 1}/{a.rounds}  loadavg {h.loadavg()}", flush=True)
            for name in SERVER_FIRST[r % len(SERVER_FIRST):] + SERVER_FIRST[:r % len(SERVER_FIRST)]:
                topo = tcp_topology(name, tools, work, app)
                try:
                    time.sleep(0.3)
                    res = server_first_setup(topo.port, a.connections)
                finally:
                    for px in reversed(topo.proxies):
                        h.stop(px.proc)
                sf[name].append(res)
                g = res["greeting_ms"]
                print(f"  server-first {name:18s} greeting p50={g['p50']:.2f} "
                      f"p99={g['p99']:.2f} ms errors={res['errors']}", flush=True)
            for name in H2_TO_H1[r % len(H2_TO_H1):] + H2_TO_H1[:r % len(H2_TO_H1)]:
                res = h2_to_h1(name, tools, work, h1_port, a.secs, meta["h2_conns"],
                               meta["h2_streams"])
                h2[name].append(res)
                print(f"  h2->h1 {name:18s} {res['rps']:.0f} req/s non2xx={res.get('non2xx')}",
                      flush=True)
        h.stop(nginx)
        h.stop(greeter)
    finally:
        h.stop_all()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocols.json").write_text(json.dumps({"meta": meta, "server_first": sf,
                                                    "h2_to_h1": h2}, indent=1))
    text = report(meta, sf, h2)
    (out / "PROTOCOLS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
