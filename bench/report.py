"""Writes bench/RESULTS.md and bench/latency.png from the harness's figures."""
from __future__ import annotations

from pathlib import Path

PCTS = ("p50", "p90", "p99", "p99.9")
STYLE = {  # topology: (colour, line style, label)
    "direct": ("#555555", ":", "direct (no proxy)"),
    "trellis-1hop": ("#2e8b57", "--", "Trellis, one hop"),
    "trellis-pair": ("#2e8b57", "-", "Trellis pair (sidecar to sidecar)"),
    "envoy-1hop": ("#c0392b", "--", "Envoy, one hop"),
    "envoy-pair": ("#c0392b", "-", "Envoy pair (sidecar to sidecar)"),
    "trellis-pair-mtls": ("#1f5f99", "-.", "Trellis pair, mTLS"),
    "envoy-pair-mtls": ("#d68910", "-.", "Envoy pair, mTLS"),
}
MTLS = ("trellis-pair-mtls", "envoy-pair-mtls")


# shared/BASELINE.md (Envoy 1.40 on a 2-core machine of this kind, same method): for a sanity
# check of the harness. max req/s, p50, p90, p99 ms, CPU s per 1000 req (per proxy).
BASELINE = {
    "direct": (89000, 0.095, 0.20, 0.40, None),
    "envoy-1hop": (19000, 0.32, 0.49, 0.82, 0.18),
    "envoy-pair": (9300, 0.54, 0.76, 1.48, 0.19),
    "envoy-pair-mtls": (8500, 0.57, 0.80, 1.32, 0.20),  # baseline: RSA-2048; here ECDSA P-256
}


def baseline_table(summary: dict) -> list[str]:
    """This run's direct and Envoy figures against BASELINE.md: off by more than 20% = suspect."""
    lines = ["| topology | figure | this run | baseline | this / baseline |",
             "|---|---|---|---|---|"]
    for name, ref in BASELINE.items():
        t = summary.get(name)
        if not t:
            continue
        cpu = max((v["cpu_s_per_1k"] for v in t["proxies"].values()), default=None)
        ours = (t["max_rps"], t["p50"], t["p90"], t["p99"], cpu)
        for label, a, b in zip(("max req/s", "p50 ms", "p90 ms", "p99 ms", "CPU s/1000 req"),
                               ours, ref):
            if a is None or b is None:
                continue
            r = a / b
            flag = "" if 0.8 <= r <= 1.2 else " **(off > 20%)**"
            fa, fb = (f"{a:.0f}", f"{b:.0f}") if b > 100 else (f"{a:.3f}", f"{b:.3f}")
            lines.append(f"| {name} | {label} | {fa} | {fb} | {r:.2f}{flag} |")
    if "direct" in summary and "envoy-1hop" in summary:
        ours = summary["envoy-1hop"]["max_rps"] / summary["direct"]["max_rps"]
        lines.append(f"| envoy-1hop / direct | max req/s | {ours:.3f} | "
                     f"{19000 / 89000:.3f} | {ours / (19000 / 89000):.2f} |")
    return lines


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def per_proxy(t: dict, key: str, fmt) -> str:
    vals = [fmt(v[key]) for v in t["proxies"].values()]
    return " / ".join(vals) if vals else "—"


def main_table(summary: dict) -> list[str]:
    has_h2 = all("h2_rps" in t for t in summary.values())
    head = ["topology", "max req/s (h1)"] + (["max req/s (h2)"] if has_h2 else []) + [
        "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "added p99 ms",
        "CPU s per 1000 req (user+sys)", "CPU s per 1000 req at max", "RSS idle MB",
        "RSS peak MB", "private idle / peak MB",
        "start-to-ready ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, t in summary.items():
        priv = [f"{mb(v['idle_anon_kb'])} / {mb(v['peak_anon_kb'])}" for v in t["proxies"].values()]
        row = [name, f"{t['max_rps']:.0f}"] + ([f"{t['h2_rps']:.0f}"] if has_h2 else []) + [
            f"{t[p]:.3f}" for p in PCTS] + [
            "—" if name == "direct" else f"+{t['added_p99']:.3f}",
            " / ".join(f"{v['cpu_s_per_1k']:.3f} ({v['user_s_per_1k']:.3f}+{v['sys_s_per_1k']:.3f})"
                       for v in t["proxies"].values()) or "—",
            per_proxy(t, "cpu_s_per_1k_at_max", lambda x: f"{x:.3f}"),
            per_proxy(t, "idle_rss_kb", mb), per_proxy(t, "peak_rss_kb", mb),
            " ; ".join(priv) or "—",
            per_proxy(t, "ready_ms", lambda x: f"{x:.1f}")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def ratio_table(rat: dict) -> list[str]:
    if not rat:
        return ["(needs both Trellis and Envoy topologies)"]
    keys = list(next(iter(rat.values())).keys())
    lines = ["| ratio | " + " | ".join(rat.keys()) + " |", "|---|" + "---|" * len(rat)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{rat[h].get(k, float('nan')):.2f}"
                                             for h in rat) + " |")
    return lines


def rounds_table(rounds: list[dict], names: list[str]) -> list[str]:
    lines = ["| round | loadavg | " + " | ".join(f"{n}: max req/s, p99 ms (other load)"
                                               for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for r in rounds:
        cells = []
        for n in names:
            t = r["topologies"].get(n)
            other = max(t["fixed"].get("other_load", 0), t["max"].get("other_load", 0)) if t else 0
            cells.append(f"{t['max']['rps']:.0f}, {t['fixed']['p99']:.3f} ({other:.2f})"
                         if t else "—")
        lines.append(f"| {r['round']} | {r['loadavg']} | " + " | ".join(cells) + " |")
    return lines


def other_load(rounds: list[dict]) -> str:
    xs = sorted(t[run]["other_load"] for r in rounds for t in r["topologies"].values()
                for run in ("fixed", "max") if "other_load" in t[run])
    if not xs:
        return "not measured"
    return f"median {xs[len(xs) // 2]:.2f}, max {xs[-1]:.2f}"


def overhead_table(overhead: dict) -> list[str]:
    """Rows: mTLS pair / plain pair figures; columns: Trellis, Envoy."""
    keys = list(dict.fromkeys(k for v in overhead.values() for k in v))
    lines = ["| mTLS pair / plain pair | " + " | ".join(overhead.keys()) + " |",
             "|---|" + "---|" * len(overhead)]
    for k in keys:
        lines.append(f"| {k.replace(' mTLS/plain', '')} | "
                     + " | ".join(f"{overhead[w].get(k, float('nan')):.2f}" for w in overhead)
                     + " |")
    return lines


def commands(meta: dict) -> list[str]:
    s = meta["settings"]
    max_cmd = (f"wrk -t{s['wrk_threads']} -c{s['conns']} -d{s['secs']}s URL"
               if s["max_tool"] == "wrk" else f"oha -z {s['secs']}s -c {s['conns']} --no-tui URL")
    return [
        "```sh",
        f"{meta['command']}",
        "# per topology and round, in this order:",
        f"oha -z {s['warmup_secs']}s -q {s['rate']} -c {s['conns']} --latency-correction URL"
        "   # warm-up, not recorded",
        f"oha -z {s['secs']}s -q {s['rate']} -c {s['conns']} --latency-correction --no-tui "
        "--output-format json URL   # percentiles, CPU",
        f"{max_cmd}   # max req/s, peak RSS",
        f"h2load -D {s['h2_secs']} -c {s['conns']} -m {s['h2_streams']} -t 1 URL"
        "   # HTTP/2 max req/s (proxies restarted with h2 upstreams)",
        "```",
    ]


def write_report(path: Path, meta: dict, summary: dict, rat: dict, tgt: list, rounds: list,
                 overhead: dict | None = None) -> str:
    m, tv = meta["machine"], meta["tools"]
    names = list(summary.keys())
    mtls = [n for n in MTLS if n in summary]
    mtls_run = ([
        "- mTLS pairs (" + ", ".join(f"`{n}`" for n in mtls) + "): TLS 1.3 between the two "
        "sidecars, both verifying the peer's chain and SPIFFE ID (URI SAN: the client side "
        "requires the server's exact ID; both server sides the client's exact ID: Envoy with a "
        "SAN matcher at the handshake, Trellis with an AuthorizationPolicy per request); "
        "certificates made "
        "once per run with openssl: ECDSA P-256 root, one leaf per side "
        "(`spiffe://cluster.local/ns/default/sa/bench-client`, `.../bench-server`). Before "
        "each measurement the harness checks that the server sidecar refuses plaintext and TLS "
        "without a client certificate, and presents the server's SPIFFE ID."] if mtls else [])
    mtls_ratios = ([" `pair-mtls` compares the mTLS pairs."] if "pair-mtls" in rat else [])
    mtls_overhead = ([
        "## mTLS overhead (each proxy's mTLS pair against its plain pair, same run)", "",
        "Ratios of the mTLS pair's figure to the plain pair's; CPU, RSS and ready compare the "
        "busier / larger / slower proxy of each pair.", "",
        *overhead_table(overhead), ""] if overhead else [])
    mtls_baseline = (["BASELINE.md's mTLS row was measured with RSA-2048 certificates; this "
                      "harness uses ECDSA P-256 (keep-alive connections: the key type costs "
                      "only at the handshakes).", ""] if "envoy-pair-mtls" in summary else [])
    out = [
        "# Trellis benchmark results", "",
        "Generated by `bench/run.sh` (see `bench/README.md` for what each figure means). "
        "Figures are medians over rounds; every ratio compares figures taken in this same run. "
        "Absolute numbers move ±10–20% with machine noise; compare only inside one run.", "",
        "## Machine and run", "",
        f"- date: {meta['date']}",
        f"- machine: {m['nproc']} CPUs, {m['cpu']}, {m['mem_gb']} GB, Linux {m['kernel']}",
        f"- load average (1/5/15 min) at start: {meta['loadavg_start']}; at end: "
        f"{meta['loadavg_end']} (other work on the machine disturbs the figures)",
        f"- other work on the machine during the load runs (CPU used by processes not the "
        f"bench's, in cores of {m['nproc']}): {other_load(rounds)}",
        f"- rounds: {meta['rounds']}, {meta['settings']['secs']} s per load run, "
        f"topology order rotated each round; bench processes at nice {meta.get('nice', 0)}",
        f"- tools: trellis `{tv['trellis']}`, Envoy `{tv['envoy']}`, `{tv['nginx']}`, "
        f"`{tv['oha']}`, `{tv['wrk']}`, `{tv['h2load']}`",
        "- backend: nginx, 1 worker, `return 200 \"ok\"`, HTTP/1.1 keep-alive (h2c on a second "
        "port for the h2load runs); proxies with one worker (`trellis proxy --workers 1`, "
        "`envoy --concurrency 1`)",
        *mtls_run, "",
        "Commands:", "", *commands(meta), "",
        "## Figures (medians)", "",
        "Per-proxy columns list client-side sidecar (A) and server-side sidecar (B) as `B / A` "
        "for pairs (the server side starts first). CPU is measured over the fixed 1000 req/s "
        "run: CPU seconds per 1000 requests, which is also vCPU used at 1000 req/s. "
        "RSS peak is VmHWM after the max-rate run; private is RssAnon (idle, and the highest "
        "sampled during the max-rate run).", "",
        *main_table(summary), "",
        "![latency percentiles per topology](latency.png)", "",
        "## Ratios (same run)", "",
        "T = Trellis, E = Envoy; the `1hop` column compares one Trellis with one Envoy, `pair` "
        "the sidecar pairs. CPU, RSS and ready compare the busier / larger / slower proxy."
        + "".join(mtls_ratios), "",
        *ratio_table(rat), "",
        *mtls_overhead,
        "## Targets (Trellis pair against the Envoy pair of this run)", "",
        "| target | met | figure |", "|---|---|---|",
        *[f"| {n} | {'met' if ok else '**not met**'} | {fig} |" for n, ok, fig in tgt], "",
        "## Rounds", "",
        "Other load: CPU (cores) used by processes other than the bench during the run "
        "(the larger of the fixed-rate and max-rate runs); anything well above 0 disturbed "
        "that figure.", "",
        *rounds_table(rounds, names), "",
        "## Sanity check against shared/BASELINE.md", "",
        "The same method measured Envoy on a quiet machine of this kind. Figures far off (more "
        "than ±20%) mean the machine was busy, or the harness differs: see the notes.", "",
        *mtls_baseline,
        *baseline_table(summary), "",
    ]
    errors = {n: t["errors"] for n, t in summary.items() if t["errors"]}
    if errors:
        out += [f"**Warning:** non-200 answers or socket errors: {errors}", ""]
    # Hand-written notes; optimizations and what each bought; profile.py's output; the
    # control-plane scale figures (bench/control-plane.sh); a sidecar's cost as the mesh grows,
    # beside Envoy (bench/scale.sh).
    for extra in ("notes.md", "changes.md", "profile.md", "control-plane.md", "scale.md",
                  "big-apply.md"):
        if (path.parent / extra).exists():
            out += [(path.parent / extra).read_text().rstrip(), ""]
    text = "\n".join(out)
    path.write_text(text)
    return text


def write_chart(summary: dict, rounds: list, path: Path, meta: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    xs = range(len(PCTS))
    for name, t in summary.items():
        colour, style, label = STYLE.get(name, ("#1f77b4", "-", name))
        per_round = [[r["topologies"][name]["fixed"][p] for r in rounds
                      if name in r["topologies"]] for p in PCTS]
        ax.fill_between(xs, [min(v) for v in per_round], [max(v) for v in per_round],
                        color=colour, alpha=0.08 if style == "-" else 0.05)
        ax.plot(xs, [t[p] for p in PCTS], style, color=colour, marker="o", label=label)
    ax.set_xticks(list(xs), PCTS)
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (log scale)")
    s = meta["settings"]
    ax.set_title(f"Latency at a fixed {s['rate']} req/s, {s['conns']} connections "
                 f"(median of {meta['rounds']} rounds; band = min..max)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)
    envoy = meta["tools"]["envoy"].split("/")
    fig.text(0.99, 0.01, f"{meta['date']} · {meta['machine']['nproc']} CPUs · "
             f"Envoy {envoy[1] if len(envoy) > 1 else '?'}", ha="right", fontsize=7,
             color="#777777")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
