#!/usr/bin/env python3
"""What transparent capture costs (issue 15): captured against explicit ports, in the same run.

Two network namespaces joined by one veth pair stand for two hosts:

    client ns  trellis-bench-<PID>-c   eth0 10.99.0.1/24, lo; route 240.240.0.0/16 dev eth0 (VIPs)
    server ns  trellis-bench-<PID>-s   eth0 10.99.0.2/24, lo; nginx (the harness's config,
                                       one worker, answers `ok`) on 127.0.0.1 and 10.99.0.2

Topologies (all plaintext HTTP/1.1, no mTLS, so that only capture differs):
    direct          oha (client ns) -> nginx 10.99.0.2 over the veth
    explicit-1hop   oha -> 127.0.0.1:ENTRY (the client sidecar's `--upstream backend=` port)
                    -> nginx (Workload address 10.99.0.2:nginx port)
    captured-1hop   the same sidecar, same flags plus `--intercept`; oha calls http://VIP:80/
                    (the backend's ServiceAddress), the nat rules send it to the capture listener
    explicit-pair   client sidecar (as explicit-1hop) -> server sidecar's inbound port
                    (Workload address 10.99.0.2:INBOUND) -> `--app` nginx on 127.0.0.1
    captured-pair   both sidecars with `--intercept`; oha calls the VIP; the Workload address is
                    nginx's own port, 10.99.0.2:NGINX, and the server sidecar's inbound capture
                    redirects the connection to its inbound listener (checked by the
                    TRELLIS_INBOUND counters: a connection that bypassed it would reach nginx)

The namespaces are built afresh for every topology in every round (and nginx restarted in them):
a namespace where capture once ran keeps iptables-nft's nat base chains after the rules are
removed, and with them connection tracking on every packet, which would load the explicit
topologies measured in it afterwards with part of the capture's cost.

Figures per topology and round (as harness.py, with the load generators run in the client ns
through `ip netns exec`):
    CPU s per 1000 req   utime+stime of every sidecar (/proc/PID/stat) over an oha run at a
                         fixed 1000 req/s, 64 connections, latency correction on; summed over
                         the sidecars of a topology (and per sidecar)
    p50..p99.9           that run's latencies; added p99 = p99 - direct's p99 of the same round
    max req/s            wrk -t2 -c64, closed loop, bounded by --secs
Before measuring, one request must answer 200 `ok`; captured topologies must show their
REDIRECT rules counting packets, explicit ones must have no nat table in their namespaces;
after the sidecars stop, no TRELLIS chain may be left in the namespace.

Needs root, `ip` (iproute2), `iptables` (nft backend), nginx, oha, wrk. Every process it starts
is stopped by PID; every load run is bounded; the namespaces are removed at exit (signals
included), and those of an earlier run whose PID is dead are removed at start. The root
namespace's `iptables-save` is compared before and after, and no namespace of the run may be
left.

    python3 bench/capture.py --trellis target/release/trellis            # 5 rounds of 10 s
    python3 bench/capture.py --trellis BIN --rounds 1 --secs 3           # a smoke test
    python3 bench/capture.py --trellis BIN --nice -10 --wait-quiet 60 --quiet-below 1.0
"""
from __future__ import annotations

import argparse
import atexit
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ left in bench/
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402  (spawn, stop, oha_fixed, wrk_max, ... and their cleanup)

NS_PREFIX = "trellis-bench-"
WORK_PREFIX = "trellis-capture-bench-"
CLIENT_IP, SERVER_IP, PREFIX_LEN = "10.99.0.1", "10.99.0.2", 24
VIP, VIP_RANGE = "240.240.0.1", "240.240.0.0/16"
SERVICE_PORT = 80
IF = "eth0"
TOPOLOGIES = ["direct", "explicit-1hop", "captured-1hop", "explicit-pair", "captured-pair"]
IP = shutil.which("ip") or "/usr/sbin/ip"
IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"
IPTABLES_SAVE = shutil.which("iptables-save") or "/usr/sbin/iptables-save"
NFT = shutil.which("nft") or "/usr/sbin/nft"

# One HTTP GET from inside a namespace (`ip netns exec NS python3 -c NS_GET host port path
# limit`): with limit 0 one attempt, printing the status line and the body; otherwise retried
# every 5 ms until it answers 200 or `limit` seconds pass (exit 1).
NS_GET = r"""
import http.client, sys, time
host, port, path, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
t0 = time.monotonic()
while True:
    try:
        c = http.client.HTTPConnection(host, port, timeout=2)
        c.request("GET", path, headers={"Connection": "close"})
        r = c.getresponse()
        body = r.read()
        c.close()
        if r.status == 200 or limit == 0:
            sys.stdout.write(f"{r.status}\n")
            sys.stdout.flush()
            sys.stdout.buffer.write(body)
            sys.exit(0)
    except OSError as e:
        if limit == 0:
            print(f"0\n{e}")
            sys.exit(0)
    if time.monotonic() - t0 > limit:
        print("timeout")
        sys.exit(1)
    time.sleep(0.005)
"""


def run(argv: list[str], timeout: float = 30, check: bool = True) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


# --------------------------------------------------------------------------------------------
# Namespaces
# --------------------------------------------------------------------------------------------

class Net:
    """The two namespaces of this run; `create` builds them afresh, `remove` deletes them and
    kills whatever still runs in them (by PID)."""

    def __init__(self, pid: int):
        self.client = f"{NS_PREFIX}{pid}-c"
        self.server = f"{NS_PREFIX}{pid}-s"

    def exists(self) -> list[str]:
        names = [l.split()[0] for l in run([IP, "netns", "list"]).splitlines() if l.strip()]
        return [n for n in (self.client, self.server) if n in names]

    def create(self) -> None:
        self.remove()
        for ns in (self.client, self.server):
            run([IP, "netns", "add", ns])
        # Created directly in the two namespaces: no interface ever exists in the root one.
        run([IP, "link", "add", "name", IF, "netns", self.client, "type", "veth",
             "peer", "name", IF, "netns", self.server])
        for ns, addr in ((self.client, CLIENT_IP), (self.server, SERVER_IP)):
            run([IP, "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", IF])
            run([IP, "-n", ns, "link", "set", IF, "up"])
            run([IP, "-n", ns, "link", "set", "lo", "up"])
        # No default route in a namespace: the VIP range needs one, or a SYN to a VIP fails
        # before the capture rule could see it (as in crates/trellis/tests/capture.rs).
        run([IP, "-n", self.client, "route", "add", VIP_RANGE, "dev", IF])

    def remove(self) -> None:
        for ns in self.exists():
            remove_ns(ns)


def remove_ns(ns: str) -> None:
    """Kills (SIGKILL, by PID) what still runs in `ns`, then deletes it."""
    pids = run([IP, "netns", "pids", ns], check=False).split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    for _ in range(50):
        if not run([IP, "netns", "pids", ns], check=False).split():
            break
        time.sleep(0.02)
    run([IP, "netns", "del", ns], check=False)


def remove_leftovers() -> None:
    """Namespaces and work dirs of an earlier run of this script whose PID is dead (killed
    before its cleanup ran)."""
    for d in Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}*"):
        m = re.match(re.escape(WORK_PREFIX) + r"(\d+)-", d.name)
        if m and d.is_dir() and not pid_alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
    for line in run([IP, "netns", "list"]).splitlines():
        name = line.split()[0] if line.strip() else ""
        m = re.fullmatch(re.escape(NS_PREFIX) + r"(\d+)-[cs]", name)
        if m and not pid_alive(int(m.group(1))):
            print(f"removing namespace {name} left by dead pid {m.group(1)}", flush=True)
            remove_ns(name)


def ns_exec(ns: str, argv: list[str]) -> list[str]:
    return [IP, "netns", "exec", ns, *argv]


def wait_exec(p: subprocess.Popen, exe: str, limit: float = 10) -> None:
    """`ip netns exec` execs in place: wait until the PID is `exe`, so that stopping the PID
    stops it and not a wrapper."""
    want = os.path.realpath(exe)
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            if os.readlink(f"/proc/{p.pid}/exe") == want:
                return
        except OSError:
            pass
        if p.poll() is not None:
            raise RuntimeError(f"{p.args} exited with {p.returncode}")
        time.sleep(0.005)
    raise RuntimeError(f"pid {p.pid} is not {want} after {limit}s")


def ns_get(ns: str, host: str, port: int, path: str, limit: float = 0) -> tuple[int, bytes]:
    """GET from inside `ns`: (status or 0, body)."""
    r = subprocess.run(ns_exec(ns, [sys.executable, "-c", NS_GET, host, str(port), path,
                                     str(limit)]),
                       capture_output=True, timeout=limit + 15, stdin=subprocess.DEVNULL)
    head, _, body = r.stdout.partition(b"\n")
    if r.returncode != 0 or not head.strip().isdigit():
        return 0, r.stdout + r.stderr
    return int(head), body


def nat_rules(ns: str) -> str:
    """The namespace's nft ruleset (read-only; empty when no table exists)."""
    return run(ns_exec(ns, [NFT, "list", "ruleset"]), check=False)


def redirect_packets(ns: str, chain: str) -> int:
    """Packets the REDIRECT rules of `chain` (nat table) have matched."""
    out = run(ns_exec(ns, [IPTABLES, "-w", "-t", "nat", "-L", chain, "-n", "-v", "-x"]),
              check=False)
    total = 0
    for line in out.splitlines()[2:]:
        f = line.split()
        if len(f) > 2 and f[2] == "REDIRECT" and f[0].isdigit():
            total += int(f[0])
    return total


def root_rules() -> str:
    """The root namespace's iptables rules without counters and comments."""
    lines = run([IPTABLES_SAVE], check=False).splitlines()
    return "\n".join(re.sub(r" \[\d+:\d+\]$", "", l) for l in lines if not l.startswith("#"))


# --------------------------------------------------------------------------------------------
# Backend, sidecars, topologies
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Sidecar:
    name: str
    proc: subprocess.Popen
    ns: str
    admin: int
    log: Path


@dataclasses.dataclass
class Topo:
    name: str
    url: str
    sidecars: list[Sidecar]
    captured: bool


def start_nginx(tools: h.Tools, work: Path, ns: str) -> tuple[subprocess.Popen, int]:
    """harness's nginx config, run in the server namespace, listening on 127.0.0.1 and the
    namespace's veth address."""
    prefix = work / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    port, h2 = h.free_port(), h.free_port()
    conf = h.render("nginx.conf", prefix / "nginx.conf", PREFIX=prefix, H1_PORT=port, H2_PORT=h2)
    text = conf.read_text()
    listen = f"listen 127.0.0.1:{port};"
    if listen not in text:
        raise RuntimeError(f"{conf}: no `{listen}` to add the veth address to")
    conf.write_text(text.replace(listen, f"{listen}\n        listen {SERVER_IP}:{port};"))
    p = h.spawn(ns_exec(ns, [tools.nginx, "-p", str(prefix), "-c", str(conf),
                             "-e", str(prefix / "error.log")]), work / "nginx.log")
    wait_exec(p, tools.nginx)
    status, body = ns_get(ns, "127.0.0.1", port, "/", limit=15)
    if status != 200:
        h.stop(p)
        raise RuntimeError(f"nginx in {ns} not ready: {body[-300:]!r}")
    return p, port


def mesh_config(work: Path, name: str, workload_port: int) -> Path:
    """Service `backend` (port 80, http), its VIP, one Workload on the server namespace."""
    path = work / f"{name}.yaml"
    path.write_text(f"""\
# Written by bench/capture.py for topology {name}.
apiVersion: trellis.dev/v1
kind: Service
metadata: {{name: backend}}
spec: {{ports: [{{port: {SERVICE_PORT}, protocol: http}}]}}
---
apiVersion: trellis.dev/v1
kind: ServiceAddress
metadata: {{name: backend}}
spec: {{address: {VIP}}}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {{name: backend-0}}
spec: {{service: backend, address: {SERVER_IP}, port: {workload_port}}}
""")
    return path


def start_sidecar(tools: h.Tools, work: Path, name: str, ns: str, args: list[str],
                  intercept: bool) -> Sidecar:
    admin = h.free_port()
    extra = (["--intercept", "--intercept-listen", f"127.0.0.1:{h.free_port()}"]
             if intercept else [])
    argv = [tools.trellis, "--log", "warn", "proxy", *args, *extra,
            "--admin", f"127.0.0.1:{admin}", "--workers", "1"]
    p = h.spawn(ns_exec(ns, argv), work / f"{name}.log")
    try:
        wait_exec(p, tools.trellis)
        status, body = ns_get(ns, "127.0.0.1", admin, "/ready", limit=15)
        if status != 200:
            raise RuntimeError(f"{name} not ready in {ns}: {body[-300:]!r}; log: "
                               f"{(work / (name + '.log')).read_text()[-800:]}")
        if intercept and "TRELLIS_OUTPUT" not in nat_rules(ns):
            raise RuntimeError(f"{name} is ready but no TRELLIS_OUTPUT chain in {ns}")
    except BaseException:
        h.stop(p)
        raise
    return Sidecar(name, p, ns, admin, work / f"{name}.log")


def build(name: str, tools: h.Tools, work: Path, net: Net, nginx_port: int) -> Topo:
    """Starts the sidecars of `name`, server side first."""
    if name == "direct":
        return Topo(name, f"http://{SERVER_IP}:{nginx_port}/", [], False)
    captured = name.startswith("captured")
    pair = name.endswith("pair")
    entry, inbound = h.free_port(), h.free_port()
    if not pair:
        workload_port = nginx_port
    else:
        # Explicit: the peer calls the inbound port. Captured: the peer calls the app's port and
        # the server sidecar's inbound capture takes the connection to its inbound listener.
        workload_port = nginx_port if captured else inbound
    cfg = mesh_config(work, name, workload_port)
    sidecars: list[Sidecar] = []
    try:
        if pair:
            sidecars.append(start_sidecar(tools, work, f"{name}.server", net.server, [
                "--config", str(cfg), "--service", "backend", "--outbound", "off",
                "--inbound", f"0.0.0.0:{inbound}", "--app", f"127.0.0.1:{nginx_port}"],
                captured))
        sidecars.append(start_sidecar(tools, work, f"{name}.client", net.client, [
            "--config", str(cfg), "--service", "client", "--outbound", "off",
            "--upstream", f"backend=127.0.0.1:{entry}"], captured))
    except BaseException:
        for s in reversed(sidecars):
            h.stop(s.proc, grace=10)
        raise
    url = f"http://{VIP}:{SERVICE_PORT}/" if captured else f"http://127.0.0.1:{entry}/"
    return Topo(name, url, sidecars, captured)


def teardown(topo: Topo, net: Net) -> dict:
    """Stops the sidecars (SIGTERM: they remove their rules) and reports what they left."""
    for s in reversed(topo.sidecars):
        h.stop(s.proc, grace=10)
    left = {}
    for ns in (net.client, net.server):
        rules = nat_rules(ns)
        left[ns] = "TRELLIS" in rules
    return left


def check_topology(topo: Topo, net: Net) -> dict:
    """One request answers 200 `ok`; a captured topology went through its REDIRECT rules,
    an explicit one ran in namespaces without any nat table."""
    status, body = ns_get(net.client, *url_parts(topo.url))
    if status != 200 or body.strip() != b"ok":
        logs = "".join(f"\n{s.name} log: {s.log.read_text()[-800:]}" for s in topo.sidecars)
        raise RuntimeError(f"{topo.name}: {topo.url} answered {status} {body[:300]!r}, "
                           f"expected 200 ok{logs}")
    out = {}
    if topo.captured:
        out["client_redirected_pkts"] = redirect_packets(net.client, "TRELLIS_OUTPUT")
        if out["client_redirected_pkts"] < 1:
            raise RuntimeError(f"{topo.name}: the request was not captured in {net.client}")
        if topo.name.endswith("pair"):
            out["server_redirected_pkts"] = redirect_packets(net.server, "TRELLIS_INBOUND")
            if out["server_redirected_pkts"] < 1:
                raise RuntimeError(f"{topo.name}: the server sidecar's inbound capture saw "
                                   "nothing: the connection bypassed it")
    else:
        for ns in (net.client, net.server):
            rules = nat_rules(ns)
            if "nat" in rules:
                raise RuntimeError(f"{topo.name}: {ns} has a nat table (conntrack would run): "
                                   f"{rules[:300]}")
    return out


def url_parts(url: str) -> tuple[str, int, str]:
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    return m.group(1), int(m.group(2)), m.group(3)


def requests_counted(s: Sidecar) -> float:
    """Sum of the sidecar's trellis_requests_total series (admin /metrics)."""
    status, body = ns_get(s.ns, "127.0.0.1", s.admin, "/metrics")
    if status != 200:
        return float("nan")
    total = 0.0
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("trellis_requests_total"):
            try:
                total += float(line.rsplit(None, 1)[1])
            except (IndexError, ValueError):
                pass
    return total


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Settings:
    secs: int
    rate: int = 1000
    conns: int = 64
    wrk_threads: int = 2
    warmup_secs: int = 1
    settle: float = 0.3


def ns_tools(tools: h.Tools, work: Path, ns: str) -> h.Tools:
    """`tools` whose oha and wrk run in `ns`: two-line wrappers that exec `ip netns exec NS
    tool` in place (so harness's oha_fixed / wrk_max, their parsing and their PID-bounded runs
    apply unchanged, and the PID they kill on overrun is the load generator itself)."""
    d = work / "bin"
    d.mkdir(exist_ok=True)
    wrapped = {}
    for tool in ("oha", "wrk"):
        w = d / f"{tool}-in-ns"
        w.write_text(f'#!/bin/sh\nexec {IP} netns exec {ns} {getattr(tools, tool)} "$@"\n')
        w.chmod(0o755)
        wrapped[tool] = str(w)
    return dataclasses.replace(tools, **wrapped)


def measure(name: str, tools: h.Tools, load: h.Tools, work: Path, net: Net, s: Settings) -> dict:
    net.create()
    nginx = None
    topo = None
    try:
        nginx, nginx_port = start_nginx(tools, work, net.server)
        backend = [nginx.pid, *h.child_pids(nginx.pid)]
        topo = build(name, tools, work, net, nginx_port)
        time.sleep(s.settle)
        res: dict = {"sidecars": {}}
        for sc in topo.sidecars:
            res["sidecars"][sc.name.split(".")[-1]] = {
                "idle_rss_kb": h.mem_kb(sc.proc.pid)["VmRSS"]}
        res["checks"] = check_topology(topo, net)
        if s.warmup_secs:
            h.oha_fixed(load, topo.url, s.warmup_secs, s.rate, s.conns)
        pids = [sc.proc.pid for sc in topo.sidecars]
        before = {sc.name: h.cpu_times(sc.proc.pid) for sc in topo.sidecars}
        with h.OtherLoad(backend + pids) as other:
            fixed = h.oha_fixed(load, topo.url, s.secs, s.rate, s.conns)
        fixed["other_load"] = other.cores
        thousands = (fixed["ok"] + fixed["non200"]) / 1000 or float("nan")
        total = 0.0
        for sc in topo.sidecars:
            (u0, s0), (u1, s1) = before[sc.name], h.cpu_times(sc.proc.pid)
            cpu = (u1 - u0 + s1 - s0) / thousands
            total += cpu
            res["sidecars"][sc.name.split(".")[-1]].update({
                "cpu_s_per_1k": cpu, "user_s_per_1k": (u1 - u0) / thousands,
                "sys_s_per_1k": (s1 - s0) / thousands})
        fixed["cpu_s_per_1k"] = total if topo.sidecars else float("nan")
        res["fixed"] = fixed
        time.sleep(s.settle)
        before_max = {sc.name: h.cpu_seconds(sc.proc.pid) for sc in topo.sidecars}
        with h.OtherLoad(backend + pids) as other:
            mx = h.wrk_max(load, topo.url, s.secs, s.wrk_threads, s.conns)
        mx["other_load"] = other.cores
        total = 0.0
        for sc in topo.sidecars:
            used = (h.cpu_seconds(sc.proc.pid) - before_max[sc.name]) / (mx["requests"] / 1000)
            total += used
            res["sidecars"][sc.name.split(".")[-1]]["cpu_s_per_1k_at_max"] = used
        mx["cpu_s_per_1k"] = total if topo.sidecars else float("nan")
        res["max"] = mx
        for sc in topo.sidecars:
            res["sidecars"][sc.name.split(".")[-1]]["requests_counted"] = requests_counted(sc)
        if topo.captured:
            res["checks"]["client_redirected_pkts_end"] = redirect_packets(net.client,
                                                                           "TRELLIS_OUTPUT")
        return res
    finally:
        if topo is not None:
            left = teardown(topo, net)
            if any(left.values()):
                print(f"  WARNING {name}: TRELLIS rules left after SIGTERM: {left}", flush=True)
                LEFT_RULES.append((name, left))
        if nginx is not None:
            h.stop(nginx)
        net.remove()


LEFT_RULES: list = []


def one_line(name: str, r: dict) -> str:
    f, m = r["fixed"], r["max"]
    sc = " ".join(f"{k}:cpu={v['cpu_s_per_1k']:.3f}(u{v['user_s_per_1k']:.3f}/"
                  f"s{v['sys_s_per_1k']:.3f}) req={v['requests_counted']:.0f}"
                  for k, v in r["sidecars"].items())
    bad = f["non200"] + f["errors"] + m["non2xx"] + m["socket_errors"]
    warn = f" ERRORS={bad}" if bad else ""
    return (f"{name:14s} max={m['rps']:.0f}/s p50={f['p50']:.3f} p99={f['p99']:.3f}ms "
            f"cpu/1k={f['cpu_s_per_1k']:.3f} {sc} other-load={f['other_load']:.2f}/"
            f"{m['other_load']:.2f}{warn}")


def run_rounds(tools: h.Tools, work: Path, net: Net, s: Settings, rounds: int,
               names: list[str], quiet: tuple[float, float]) -> list[dict]:
    load = ns_tools(tools, work, net.client)
    out = []
    for r in range(rounds):
        h.wait_for_quiet(*quiet)
        order = names[r % len(names):] + names[:r % len(names)]
        rnd = {"round": r + 1, "loadavg": h.loadavg(), "order": order, "topologies": {}}
        print(f"round {r + 1}/{rounds}  loadavg {rnd['loadavg']}  order {' '.join(order)}",
              flush=True)
        for name in order:
            res = measure(name, tools, load, work, net, s)
            rnd["topologies"][name] = res
            print("  " + one_line(name, res), flush=True)
        rnd["loadavg_end"] = h.loadavg()
        out.append(rnd)
    return out


# --------------------------------------------------------------------------------------------
# Summary and output
# --------------------------------------------------------------------------------------------

def summarize(rounds: list[dict], names: list[str]) -> dict:
    summary = {}
    for name in names:
        rs = [r["topologies"][name] for r in rounds if name in r["topologies"]]
        t = {k: h.med([x["fixed"][k] for x in rs]) for k in ("p50", "p90", "p99", "p99.9")}
        t["fixed_rps"] = h.med([x["fixed"]["rps"] for x in rs])
        t["max_rps"] = h.med([x["max"]["rps"] for x in rs])
        t["cpu_s_per_1k"] = h.med([x["fixed"]["cpu_s_per_1k"] for x in rs])
        t["cpu_s_per_1k_at_max"] = h.med([x["max"]["cpu_s_per_1k"] for x in rs])
        t["added_p99"] = h.med([x["fixed"]["p99"] - rd["topologies"]["direct"]["fixed"]["p99"]
                                for x, rd in zip(rs, rounds) if "direct" in rd["topologies"]])
        t["errors"] = sum(x["fixed"]["non200"] + x["fixed"]["errors"] + x["max"]["non2xx"]
                          + x["max"]["socket_errors"] for x in rs)
        keys = ("cpu_s_per_1k", "user_s_per_1k", "sys_s_per_1k", "cpu_s_per_1k_at_max",
                "idle_rss_kb")
        t["sidecars"] = {sc: {k: h.med([x["sidecars"][sc][k] for x in rs]) for k in keys}
                         for sc in (rs[0]["sidecars"] if rs else {})}
        summary[name] = t
    return summary


def ratios(summary: dict, rounds: list[dict]) -> dict:
    """captured / explicit per hop count: of the medians, and the median of per-round ratios."""
    out = {}
    for hop in ("1hop", "pair"):
        c, e = summary.get(f"captured-{hop}"), summary.get(f"explicit-{hop}")
        if not c or not e:
            continue
        both = [(r["topologies"][f"captured-{hop}"], r["topologies"][f"explicit-{hop}"])
                for r in rounds
                if {f"captured-{hop}", f"explicit-{hop}"} <= r["topologies"].keys()]
        per_round = [h.safe_div(rc["fixed"]["cpu_s_per_1k"], re_["fixed"]["cpu_s_per_1k"])
                     for rc, re_ in both]
        out[hop] = {
            "CPU/1k C/E": h.safe_div(c["cpu_s_per_1k"], e["cpu_s_per_1k"]),
            "CPU/1k C/E per-round median": h.med(per_round),
            "CPU/1k at max C/E": h.safe_div(c["cpu_s_per_1k_at_max"], e["cpu_s_per_1k_at_max"]),
            "p99 C/E": h.safe_div(c["p99"], e["p99"]),
            "added p99 C-E ms": c["added_p99"] - e["added_p99"],
            "max_rps C/E": h.safe_div(c["max_rps"], e["max_rps"]),
        }
    return out


def table(summary: dict, rat: dict) -> str:
    lines = ["| topology | CPU s / 1000 req (all sidecars; per sidecar) | p50 ms | p99 ms | "
             "added p99 ms | max req/s | CPU s / 1000 req at max | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for name, t in summary.items():
        per = " / ".join(f"{k} {v['cpu_s_per_1k']:.3f}" for k, v in t["sidecars"].items())
        cpu = f"{t['cpu_s_per_1k']:.3f} ({per})" if t["sidecars"] else "—"
        at_max = f"{t['cpu_s_per_1k_at_max']:.3f}" if t["sidecars"] else "—"
        added = "—" if name == "direct" else f"{t['added_p99']:+.3f}"
        lines.append(f"| {name} | {cpu} | {t['p50']:.3f} | {t['p99']:.3f} | {added} | "
                     f"{t['max_rps']:.0f} | {at_max} | {t['errors']} |")
    if rat:
        lines += ["", "| captured / explicit | CPU/1k (medians) | CPU/1k (per-round median) | "
                  "CPU/1k at max | p99 | added p99 C−E ms | max req/s | ≤ 10% CPU? |",
                  "|---|---|---|---|---|---|---|---|"]
        for hop, r in rat.items():
            ok = "yes" if r["CPU/1k C/E"] <= 1.10 else "**no**"
            lines.append(f"| {hop} | {r['CPU/1k C/E']:.3f} | "
                         f"{r['CPU/1k C/E per-round median']:.3f} | {r['CPU/1k at max C/E']:.3f} | "
                         f"{r['p99 C/E']:.3f} | {r['added p99 C-E ms']:+.3f} | "
                         f"{r['max_rps C/E']:.3f} | {ok} |")
    return "\n".join(lines)


def report(meta: dict, rounds: list[dict], summary: dict, rat: dict) -> str:
    m = meta["machine"]
    lines = [
        "# Transparent capture against explicit ports (issue 15)",
        "",
        f"Written by `bench/capture.py` on {meta['date']}. Command: `{meta['command']}`",
        "",
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']}, {m['mem_gb']} GB; "
        f"nice {meta['nice']}; {meta['rounds']} round(s) of {meta['settings']['secs']} s per "
        f"load run; loadavg at start {meta['loadavg_start']}, at end {meta['loadavg_end']}.",
        "",
        "Tools: " + "; ".join(f"{k}: {v}" for k, v in meta["tools"].items()),
        "",
        "Two network namespaces joined by a veth pair (client 10.99.0.1, server 10.99.0.2; "
        "nginx, one worker, in the server namespace), rebuilt for every topology; plaintext "
        "HTTP/1.1, sidecars with `--workers 1`, the same flags in the explicit and captured "
        "variants but `--intercept`. CPU is utime+stime of the topology's sidecars over oha at "
        f"a fixed {meta['settings']['rate']} req/s ({meta['settings']['conns']} connections, "
        "latency correction), per 1000 requests; p50/p99 from that run; added p99 = p99 − "
        "direct's p99 in the same round; max req/s from wrk -t2 -c64 (closed loop). "
        "Medians over rounds. The namespaces are rebuilt for every topology: once capture has "
        "run in one, iptables-nft's empty `nat` base chains stay after the rules are removed "
        "and keep connection tracking on for every packet there.",
        "",
        f"Resolution: /proc CPU times count in 1/{h.CLK_TCK} s, so one tick is "
        f"{1000 / h.CLK_TCK / (meta['settings']['rate'] * meta['settings']['secs']):.4f} "
        "s per 1000 requests in one fixed-rate run.",
        "",
        table(summary, rat),
        "",
        "Target (issue 15): the capture path costs ≤ 10% more CPU per 1000 requests than the "
        "explicit one (the `CPU/1k (medians)` column ≤ 1.10).",
        "",
        "## Rounds",
        "",
        "| round | loadavg (start → end) | order | CPU/1k E-1hop / C-1hop / E-pair / C-pair | "
        "other load (cores, fixed-rate runs) |",
        "|---|---|---|---|---|",
    ]
    for r in rounds:
        cpu = " / ".join(f"{r['topologies'][n]['fixed']['cpu_s_per_1k']:.3f}"
                         for n in ("explicit-1hop", "captured-1hop", "explicit-pair",
                                   "captured-pair") if n in r["topologies"])
        other = " ".join(f"{t['fixed']['other_load']:.2f}" for t in r["topologies"].values())
        lines.append(f"| {r['round']} | {r['loadavg']} → {r.get('loadavg_end', '?')} | "
                     f"{' '.join(r['order'])} | {cpu} | {other} |")
    if meta.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in meta["warnings"]]
    return "\n".join(lines) + "\n"


def tool_versions(tools: h.Tools) -> dict:
    def first(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception as e:
            return f"? ({e})"
    return {"trellis": first([tools.trellis, "--version"]), "nginx": first([tools.nginx, "-v"]),
            "oha": first([tools.oha, "--version"]), "wrk": first([tools.wrk, "-v"]),
            "iptables": first([IPTABLES, "--version"])}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

NET: Net | None = None
WORK: Path | None = None


def cleanup() -> None:
    h.stop_all()
    if NET is not None:
        NET.remove()


def on_signal(signum, _frame):
    cleanup()
    if WORK is not None:
        shutil.rmtree(WORK, ignore_errors=True)
    sys.exit(128 + signum)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trellis", required=True, help="trellis binary (copied to a temp dir)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--secs", type=int, default=10, help="duration of each load run")
    ap.add_argument("--rate", type=int, default=1000, help="fixed rate of the CPU/latency run")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES),
                    help="comma-separated, from: " + ",".join(TOPOLOGIES))
    ap.add_argument("--wait-quiet", type=float, default=0,
                    help="wait up to this many seconds before each round for a quiet machine")
    ap.add_argument("--quiet-below", type=float, default=1.0,
                    help="quiet = 1-minute load average below this")
    ap.add_argument("--nice", type=int, default=0,
                    help="run the whole bench at this nice value (e.g. -10)")
    ap.add_argument("--out", default=str(h.BENCH_DIR / "capture"),
                    help="where results.json and RESULTS.md are written")
    ap.add_argument("--command", default="", help="the command line to record in RESULTS.md")
    a = ap.parse_args()
    unknown = [n for n in a.topologies.split(",") if n not in TOPOLOGIES]
    if unknown:
        ap.error(f"unknown topologies {unknown}; known: {','.join(TOPOLOGIES)}")
    return a


def main() -> int:
    global NET, WORK
    a = parse_args()
    if os.geteuid() != 0:
        raise SystemExit("capture.py must run as root (namespaces, veths, iptables)")
    names = [n for n in TOPOLOGIES if n in a.topologies.split(",")]
    if a.nice:
        os.setpriority(os.PRIO_PROCESS, 0, a.nice)  # inherited by every process started
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(cleanup)
    remove_leftovers()
    root_before = root_rules()
    s = Settings(secs=a.secs, rate=a.rate, conns=a.conns)
    work = WORK = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-"))
    tools = h.find_tools(a.trellis, work, need=("trellis", "nginx", "oha", "wrk"))
    NET = Net(os.getpid())
    started = dt.datetime.now(dt.timezone.utc)
    start_load = h.loadavg()
    print(f"work dir {work}; namespaces {NET.client} {NET.server}; loadavg {start_load}",
          flush=True)
    try:
        rounds = run_rounds(tools, work, NET, s, a.rounds, names,
                            (a.wait_quiet, a.quiet_below))
    finally:
        cleanup()
    warnings = [f"{n}: TRELLIS rules left in a namespace after SIGTERM: {l}"
                for n, l in LEFT_RULES]
    busy = max((t["fixed"]["other_load"] for r in rounds for t in r["topologies"].values()),
               default=0.0)
    if busy > 0.5:
        warnings.append(f"other work used up to {busy:.2f} cores during the fixed-rate runs "
                        f"(of {os.cpu_count()}): the machine was busy, the figures are noise-prone")
    if root_rules() != root_before:
        warnings.append("the root namespace's iptables-save changed during the run (this run "
                        "never touches it: someone else did, or a bug here)")
    if NET.exists():
        warnings.append(f"namespaces of this run still exist: {NET.exists()}")
    for w in warnings:
        print("WARNING: " + w, flush=True)
    summary = summarize(rounds, names)
    rat = ratios(summary, rounds)
    meta = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "loadavg_start": start_load,
            "loadavg_end": h.loadavg(), "machine": h.machine_info(),
            "tools": tool_versions(tools), "settings": s.__dict__, "rounds": a.rounds,
            "nice": a.nice, "command": a.command or "python3 " + " ".join(sys.argv),
            "warnings": warnings}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "rounds": rounds, "summary": summary, "ratios": rat}, indent=1))
    text = report(meta, rounds, summary, rat)
    (out / "RESULTS.md").write_text(text)
    print()
    print(table(summary, rat))
    print(f"\nwrote {out / 'results.json'} and {out / 'RESULTS.md'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
