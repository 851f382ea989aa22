"""python -m bench [http|totp|report|audit|soak|all] — runs the benchmarks and writes bench/results/.

Figures on a shared machine drift by ±15-25 % between runs, so HTTP throughput is reported as a
ratio against an empty Tornado handler measured in the same run, with the same process count,
connections and load tool.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from itertools import product
from pathlib import Path

RESULTS = Path(__file__).with_name("results")


def machine() -> str:
    cpus = len(os.sched_getaffinity(0))
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{cpus} cores ({model}), Python {platform.python_version()}, {platform.system()} {platform.release()}"


def run_http(args) -> list[dict]:
    from .load import Config, run_config

    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    rows = []
    for database, processes, limiter in product(args.databases, args.processes, args.limiters):
        config = Config(database, processes, limiter)
        print(f"… {database}, {processes} process(es), {limiter} limits", file=sys.stderr, flush=True)
        results = run_config(
            config, args.scenarios, args.duration, args.runs, args.warmup, args.connections, args.devices
        )
        rows.append({"database": database, "processes": processes, "limiter": limiter, **results})
    return rows


def http_table(rows: list[dict], scenarios: list[str]) -> str:
    lines = [
        "| database | procs | limits | baseline req/s | "
        + " | ".join(f"{s} req/s (ratio, p50/p99 ms)" for s in scenarios)
        + " | non-2xx | RSS MiB | audit check |",
        "|---" * (7 + len(scenarios)) + "|",
    ]
    for r in rows:
        cells = [
            f"{r[s]['rps']:.0f} (**{r[s]['ratio']:.0%}**, {r[s]['p50_ms']:.1f}/{r[s]['p99_ms']:.1f})" for s in scenarios
        ]
        errors = sum(r[s]["non_2xx"] + r[s]["socket_errors"] for s in scenarios)
        proof = [
            f"{s}: {r[s]['audit_rows_per_request']:.2f} rows/req"
            + (f", {r[s]['accepted_share']:.0%} accepted" if "accepted_share" in r[s] else "")
            + (f", batch {r[s]['mean_batch']}" if "mean_batch" in r[s] else "")
            for s in scenarios
            if "audit_rows_per_request" in r[s]
        ]
        lines.append(
            f"| {r['database']} | {r['processes']} | {r['limiter']} | {r['baseline']['rps']:.0f} | "
            + " | ".join(cells)
            + f" | {errors} | {', '.join(map(str, r['rss_mib']))} | {'; '.join(proof)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", "http", "totp", "report", "audit", "soak", "population", "instances", "large", "webhooks"],
    )
    parser.add_argument("--databases", default="sqlite,postgres", type=lambda s: s.split(","))
    parser.add_argument("--processes", default="1,2", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--limiters", default="memory,redis", type=lambda s: s.split(","))
    parser.add_argument("--scenarios", default="verify_valid,verify_wrong,register,health", type=lambda s: s.split(","))
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per scenario (the median is kept)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up before the runs")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--devices", type=int, default=150_000, help="devices seeded for fresh valid codes")
    parser.add_argument("--report-rows", type=int, default=1_000_000)
    parser.add_argument("--audit-rows", type=int, default=1_000_000, help="chained rows `audit verify` checks")
    parser.add_argument("--soak-verifications", type=int, default=1_000_000, help="verifications in the memory soak")
    parser.add_argument("--soak-devices", type=int, default=100_000, help="devices the soak cycles over")
    parser.add_argument("--population", type=int, default=100_000, help="devices in the population scenario")
    parser.add_argument("--large-rows", type=int, default=10_000_000, help="audit rows in the `large` scenario")
    parser.add_argument("--large-days", type=int, default=180, help="days those rows are spread over")
    parser.add_argument("--reuse", action="store_true", help="`large`: time the reports on the database kept")
    parser.add_argument("--quick", action="store_true", help="PostgreSQL, 2 processes, memory limits, 1 short run")
    args = parser.parse_args()
    if args.quick:
        args.databases, args.processes, args.limiters = ["postgres"], [2], ["memory"]
        args.duration, args.runs, args.warmup, args.devices = 5.0, 1, 2.0, 60_000

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {"when": stamp, "machine": machine(), "settings": {k: v for k, v in vars(args).items()}}
    result["settings"]["access_log"] = os.environ.get("BENCH_ACCESS_LOG", "true")
    md = [f"# Benchmark {stamp}", "", f"Machine: {result['machine']}.", ""]
    if args.what in ("all", "totp"):
        from .micro import run as micro

        result["totp"] = micro()
        t = result["totp"]
        md += [
            "## TOTP engine (µs per call, best of 7)",
            "",
            "| bare HMAC floor (3 steps) | ours, verify ±1 | pyotp, verify ±1 | ours / pyotp | ours / floor |",
            "|---|---|---|---|---|",
            f"| {t['hmac_floor_3_steps_us']:.2f} | {t['ours_verify_window1_us']:.2f} | "
            f"{t['pyotp_verify_window1_us']:.2f} | {t['ours_vs_pyotp']:.2f} | {t['ours_vs_floor']:.2f} |",
            "",
        ]
    if args.what in ("all", "http"):
        started = time.monotonic()
        result["http"] = run_http(args)
        md += [
            f"## HTTP ({args.connections} connections, wrk -t2, {args.runs} × {args.duration:.0f} s, medians; "
            f"ratio = scenario / empty Tornado handler, same run; access log {result['settings']['access_log']})",
            "",
            http_table(result["http"], args.scenarios),
            "",
            f"({time.monotonic() - started:.0f} s)",
            "",
        ]
    if args.what in ("all", "report"):
        from .report import run as report

        result["report"] = report(args.report_rows)
        r = result["report"]
        md += [
            "## Audit report over PostgreSQL",
            "",
            f"{r['audit_rows']:,} audit rows: `report audit` took **{r['report_seconds']} s**, peak memory "
            f"**{r['peak_rss_mib']} MiB** (HTML {r['html_kib']} KiB; filling the table took {r['fill_seconds']} s).",
            "",
        ]
    if args.what in ("all", "audit"):
        from .audit import run as audit

        print(f"… audit verify over {args.audit_rows:,} rows", file=sys.stderr, flush=True)
        result["audit"] = a = audit(args.audit_rows)
        md += [
            "## Audit trail verification over PostgreSQL",
            "",
            f"{a['rows']:,} chained audit rows in {a['chains']} chains: "
            f"`audit verify` took **{a['verify_seconds']} s**, "
            f"peak memory **{a['verify_peak_rss_mib']} MiB** (making and loading the rows took {a['fill_seconds']} s). "
            f"It said: `{a['output']}`. Then `audit prune` exported and removed half of them in "
            f"**{a['prune_seconds']} s** (peak memory of the commands so far {a['prune_peak_rss_mib']} MiB): "
            f"`{a['prune_output']}`; verify afterwards: `{a['after_prune']}`",
            "",
        ]
    if args.what in ("all", "population"):
        from .load import run_population

        result["population"] = []
        for limiter in args.limiters:
            print(f"… {args.population:,} devices, cold processes, {limiter} limits", file=sys.stderr, flush=True)
            result["population"].append(
                run_population(args.population, limiter, args.duration, args.runs, args.connections)
            )
        md += [
            f"## A large population (PostgreSQL, 2 processes started cold, {args.connections} connections; wrong codes "
            f"for every one of {args.population:,} devices in a shuffled order)",
            "",
            "| limits | baseline req/s | verify req/s | ratio | p50 / p99 ms | non-2xx "
            "| RSS MiB per process (start → end) |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in result["population"]:
            r = p["verify_wrong_shuffled"]
            md.append(
                f"| {p['limiter']} | {p['baseline']['rps']:.0f} | {r['rps']:.0f} | **{r['ratio']:.0%}** | "
                f"{r['p50_ms']:.1f} / **{r['p99_ms']:.1f}** | {r['non_2xx'] + r['socket_errors']} | "
                f"{', '.join(f'{a} → {b}' for a, b in zip(r['rss_mib_start'], r['rss_mib'], strict=False))} |"
            )
        md.append("")
    if args.what in ("all", "instances"):
        from .load import run_instances

        print("… two instances, one PostgreSQL, one Redis", file=sys.stderr, flush=True)
        result["instances"] = i = run_instances(args.devices, args.duration, args.runs, args.connections)
        md += [
            f"## Two instances (two `serve` commands, one process each, Redis limits; {args.connections // 2} "
            "connections each, valid codes for fresh devices)",
            "",
            f"Combined **{i['combined_rps']:.0f} req/s** ({i['per_instance_rps'][0]} + {i['per_instance_rps'][1]}), "
            f"**{i['ratio']:.0%}** of the empty handler's {i['baseline']['rps']:.0f} req/s (2 processes) "
            "in the same run; "
            f"p99 {i['p99_ms']:.1f} ms; {i['non_2xx']} non-2xx; {i['accepted_share']:.0%} of the valid codes accepted.",
            "",
        ]
    if args.what in ("all", "webhooks"):
        from .webhooks import run as webhooks
        from .webhooks import table as webhooks_table

        scenarios = [s for s in args.scenarios if s != "health"]
        print("… webhooks: no endpoint against one taking every event", file=sys.stderr, flush=True)
        result["webhooks"] = w = webhooks(
            scenarios, args.duration, max(2, args.runs), args.warmup, args.connections, args.devices
        )
        md += [
            f"## Webhooks (PostgreSQL, {w['processes']} processes, memory limits, {args.connections} connections; runs "
            "alternating between no endpoint and one subscribed to every event, its receiver on this machine; "
            "medians; ratio = subscribed / none)",
            "",
            *webhooks_table(w),
            "",
            f"Deliveries queued {w['deliveries_queued']:,}, delivered {w['deliveries_delivered']:,} "
            f"(the receiver counted {w['receiver_got']:,}) — registrations are events, verifications of a right or "
            "wrong code are not (a lock is).",
            "",
        ]
    if args.what == "large":  # not part of `all`: filling 10,000,000 chained rows takes a quarter of an hour
        from .large import run as large

        print(f"… {args.large_rows:,} audit rows over {args.large_days} days", file=sys.stderr, flush=True)
        result["large"] = g = large(args.large_rows, args.large_days, reuse=args.reuse)
        md += [
            f"## Scheduled reports over {g['rows']:,} chained audit rows (PostgreSQL; {g['first']} to {g['last']}, "
            f"{g['rows'] // g['days']:,} rows a day, 100,000 devices)",
            "",
            "| report | period | wall time | `audit verify` of the period alone | peak MiB | slowest cells (s) |",
            "|---|---|---|---|---|---|",
        ]
        for r in (g["daily_audit"], g["monthly_usage"]):
            cells = "; ".join(f"{s} `{c[:40]}`" for s, c in r["slowest_cells"][:3])
            md.append(
                f"| {r['kind']} | {r['start']} – {r['end']} | **{r['seconds']} s** | {r['verify_seconds']} s | "
                f"{r['peak_rss_mib']} | {cells} |"
            )
        md.append("")
    if args.what in ("all", "soak"):
        from otp_service.persistence.engine import DEVICE_CACHE_SIZE

        from .load import run_soak

        print(f"… memory soak, {args.soak_verifications:,} verifications", file=sys.stderr, flush=True)
        result["soak"] = s = run_soak(args.soak_verifications, args.soak_devices, args.connections)
        series = " → ".join(
            f"{x['verifications'] // 1000}k: {max(x['rss_mib'])}"
            for x in s["samples"][:: max(1, len(s["samples"]) // 8)]
        )
        md += [
            f"## Memory soak (PostgreSQL, 2 processes, wrong codes cycling over {s['devices']:,} devices; "
            f"the device cache holds {DEVICE_CACHE_SIZE:,})",
            "",
            f"{s['verifications']:,} verifications in {s['seconds']} s ({s['non_2xx']} non-2xx): peak resident size "
            f"**{s['peak_rss_mib']} MiB** per process. Largest process, MiB, by verifications: {series}, "
            f"final {max(s['samples'][-1]['rss_mib'])}.",
            "",
        ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{stamp}.md").write_text("\n".join(md))
    (RESULTS / "latest.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
