#!/usr/bin/env python3
"""Usage: python3 bench/per_request.py --trellis BIN --tool heaptrack|callgrind [--n 1000,5000] --out DIR

Per-request allocations (heaptrack) or instructions (callgrind) of each proxy of the plain
trellis pair (bench/harness.py topology `trellis-pair`, HTTP/1.1): the pair is run twice, for
N1 and N2 requests (h2load --h1 -c 16), and the per-request figure is the slope
(count(N2) - count(N1)) / (N2 - N1), which cancels startup and per-connection costs."""
import argparse, os, re, signal, subprocess, sys, time, glob
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

def descendants(pid):
    out = [pid]
    for k in h.child_pids(pid):
        out += descendants(k)
    return out

def real_pid(p, binary):
    for _ in range(200):
        for d in descendants(p.pid):
            try:
                if os.readlink(f"/proc/{d}/exe") == binary:
                    return d
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError("no trellis process under wrapper")

def start(binary, wrap, work, name, args):
    admin = h.free_port()
    argv = wrap(name) + [binary, "--log", "warn", "proxy", *args,
                         "--admin", f"127.0.0.1:{admin}", "--workers", "1"]
    p = h.spawn(argv, work / f"{name}.log")
    h.wait_ready(p, admin, "/ready", time.perf_counter(), limit=120)
    return p

def run_once(binary, tool, work, backend, n, conns):
    work.mkdir(parents=True, exist_ok=True)
    if tool == "heaptrack":
        wrap = lambda name: ["heaptrack", "-o", str(work / f"{name}")]
    elif tool == "callgrind":
        wrap = lambda name: ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/{name}.cg"]
    else:
        wrap = lambda name: []
    cfg = h.trellis_config(work, "pair", 0, "http")
    inbound, entry = h.free_port(), h.free_port()
    cfg = h.render("trellis-mesh.yaml", work / "pair.yaml", BACKEND_PORT=inbound, PROTOCOL="http")
    b = start(binary, wrap, work, "inbound", ["--config", str(cfg), "--service", "backend",
              "--outbound", "off", "--inbound", f"127.0.0.1:{inbound}", "--app", f"127.0.0.1:{backend}"])
    a = start(binary, wrap, work, "outbound", ["--config", str(cfg), "--service", "client",
              "--outbound", "off", "--upstream", f"backend=127.0.0.1:{entry}"])
    try:
        url = f"http://127.0.0.1:{entry}/"
        h.check_ok(url)
        r = h.run_bounded(["h2load", "--h1", "-n", str(n), "-c", str(conns), "-t", "1", url], 600)
        m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", r.stdout)
        assert m and int(m.group(2)) == n, r.stdout[-800:]
    finally:
        for p in (a, b):
            pid = p.pid if tool == 'callgrind' else real_pid(p, binary)
            os.kill(pid, signal.SIGTERM)
            p.wait(timeout=120)
            if p in h._STARTED: h._STARTED.remove(p)
    res = {}
    for name in ("outbound", "inbound"):
        if tool == "heaptrack":
            f = glob.glob(str(work / f"{name}*.zst")) + glob.glob(str(work / f"{name}*.gz"))
            out = subprocess.run(["heaptrack_print", "-f", f[0], "-s", "0", "-a", "0", "-p", "0", "-T", "0", "-l", "0", "-n", "0"],
                                 capture_output=True, text=True, timeout=600).stdout
            res[name] = int(re.search(r"calls to allocation functions: (\d+)", out).group(1))
        elif tool == "callgrind":
            txt = Path(f"{work}/{name}.cg").read_text()
            tot = 0
            for f in glob.glob(f"{work}/{name}.cg*"):
                m = re.search(r"^(?:summary|totals): (\d+)", Path(f).read_text(), re.M)
                tot += int(m.group(1))
            res[name] = tot
    return res

ap = argparse.ArgumentParser()
ap.add_argument("--trellis", required=True)
ap.add_argument("--tool", default="heaptrack")
ap.add_argument("--n", default="2000,12000")
ap.add_argument("--conns", type=int, default=16)
ap.add_argument("--out", required=True)
a = ap.parse_args()
binary = os.path.realpath(a.trellis)
out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
nginx, port, _ = h.start_nginx(h.Tools("", "", "/usr/sbin/nginx", "", "", ""), out)
try:
    n1, n2 = map(int, a.n.split(","))
    r1 = run_once(binary, a.tool, out / f"n{n1}", port, n1, a.conns)
    r2 = run_once(binary, a.tool, out / f"n{n2}", port, n2, a.conns)
finally:
    h.stop(nginx)
for name in ("outbound", "inbound"):
    print(f"{a.tool} {name}: N={n1}: {r1[name]}  N={n2}: {r2[name]}  per request: {(r2[name]-r1[name])/(n2-n1):.2f}")
