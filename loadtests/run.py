"""Run the Locust load test against the orchestrator and check its promises afterwards.

    python loadtests/run.py [--shape ramp|spike|soak|failover] [--users 500] [--spawn-rate 25]
                            [--run-time 5m] [--host URL --credentials PATH] [-- locust args]

Without ``--host`` it starts ``orchestrator up`` in a temporary data directory (embedded
PostgreSQL and Redis, the API, a worker, beat, the simulator). It runs locust headless
(``loadtests/locustfile.py``; CSV and HTML in ``loadtests/results/<shape>/``), reads every
budget period once a second meanwhile, then waits (bounded) for every job of the run to end
and checks: none lost, the ledger audit clean, nothing paid twice (ledger entries, provider
bills per reference, provider jobs per attempt), no budget over its limit at any sample.

Exits 1 on any miss (also p95 or the failure ratio over their thresholds, or an exception
in a user's task). Last line:
``users=… rps=… p50_ms=… p95_ms=… p99_ms=… fail_ratio=… jobs=… lost=0 paid_twice=0 overrun=0``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the orchestrator package of this tree

import cpu  # noqa: E402
from checks import (  # noqa: E402
    BudgetSampler,
    bills,
    drain,
    failover_report,
    ledger_problems,
    paid_twice,
    run_jobs,
)
from levels import levels  # noqa: E402
from system import Target, existing, orchestrator_up, set_prediction_duration  # noqa: E402

from orchestrator.store.engine import make_engine  # noqa: E402

DEFAULT_RUN_TIME = {"ramp": "5m", "spike": "3m", "soak": "30m", "failover": "4m"}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(DEFAULT_RUN_TIME), default="ramp")
    ap.add_argument("--users", type=int, default=500, help="peak users (locust -u)")
    ap.add_argument("--spawn-rate", type=float, default=25.0, help="users started per second")
    ap.add_argument("--run-time", help="locust -t (default: ramp 5m, spike 3m, soak 30m, "
                    "failover 4m)")
    ap.add_argument("--host", help="a running API instead of `orchestrator up`")
    ap.add_argument("--credentials", type=Path,
                    help="with --host: its credentials.json (admin_key, database_url, "
                    "simulator_url)")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--tenants", type=int, default=20)
    ap.add_argument("--down-backend", default="vid-standard",
                    help="the backend the failover shape takes down")
    ap.add_argument("--video-ms", type=int,
                    help="how long a simulated video (prediction) runs; default 3000 when this "
                    "run starts the system, the simulator's own setting with --host")
    ap.add_argument("--max-p95-ms", type=float, default=2000.0)
    ap.add_argument("--max-fail-ratio", type=float, default=0.01)
    ap.add_argument("--drain-timeout", type=float, default=300.0,
                    help="seconds to wait after the run for every job to end")
    ap.add_argument("--profile", action="store_true",
                    help="sample the API with py-spy for the run (api-profile.svg)")
    ap.add_argument("--sample-every", type=float, default=1.0,
                    help="seconds between two reads of every budget period")
    args = ap.parse_args(argv)
    if args.host and not args.credentials:
        ap.error("--host needs --credentials")
    args.run_time = args.run_time or DEFAULT_RUN_TIME[args.shape]
    if args.video_ms is None and not args.host:
        args.video_ms = 3000
    return args, extra


@dataclass
class Outcome:
    figures: dict[str, Any]
    misses: list[str]


def run_locust(args: argparse.Namespace, target: Target, out: Path, extra: list[str]) -> int:
    env = {**os.environ, "LOAD_SHAPE": args.shape, "LOADTEST_CREDENTIALS": str(target.credentials),
           "LOADTEST_RUN_ID": uuid.uuid4().hex[:8], "LOADTEST_OUT": str(out),
           "LOAD_TENANTS": str(args.tenants), "LOAD_DOWN_BACKEND": args.down_backend}
    cmd = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
           "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.run_time,
           "--host", target.api_url, "--csv", str(out / args.shape),
           "--html", str(out / f"{args.shape}.html"), "--exit-code-on-error", "0",
           "--csv-full-history", "--stop-timeout", "3", *extra]
    with (out / "locust.log").open("w") as log:
        proc = subprocess.run(cmd, cwd=HERE.parent, env=env, stdout=log,
                              stderr=subprocess.STDOUT, check=False)
    return proc.returncode


def accepted_ids(out: Path) -> set[str]:
    ids: set[str] = set()
    for path in out.glob("accepted-*.txt"):
        ids.update(line.strip() for line in path.read_text().splitlines() if line.strip())
    return ids


def outcomes(out: Path) -> Counter[str]:
    total: Counter[str] = Counter()
    for path in out.glob("outcomes-*.json"):
        total.update(json.loads(path.read_text()))
    return total


def check(args: argparse.Namespace, target: Target, out: Path, extra: list[str]) -> Outcome:
    creds = target.creds()
    engine = make_engine(creds["database_url"], pool_size=2, max_overflow=2)
    sampler = BudgetSampler(engine, every_s=args.sample_every)
    misses: list[str] = []
    load_before = os.getloadavg()
    roots = cpu.system_roots(target.up_pid, target.credentials.parent, creds.get("redis_url"))
    tree0, locust0, wall0 = cpu.tree_cpu(roots), cpu.children_cpu(), time.monotonic()
    profiler = _profile(args, target, out)
    sampler.start()
    try:
        code = run_locust(args, target, out, extra)
    finally:
        sampler.stop()
        if profiler is not None:
            profiler.wait(timeout=60)
    tree1 = cpu.tree_cpu(roots)
    api_cpu = tree1["api"] - tree0["api"]  # every API process (cpu.py's roles)
    cpu_line = cpu.line(tree0, tree1, cpu.children_cpu() - locust0,
                        time.monotonic() - wall0, os.cpu_count() or 1)
    load_after = os.getloadavg()
    summary_path = out / "summary.json"
    if code != 0 or not summary_path.exists():
        tail = "".join((out / "locust.log").read_text().splitlines(True)[-15:])
        raise SystemExit(f"locust exited with {code} (see {out / 'locust.log'}):\n{tail}")
    s = json.loads(summary_path.read_text())
    said = outcomes(out)
    accepted = accepted_ids(out)

    d = drain(engine, accepted, s["tenants"], timeout_s=args.drain_timeout)
    problems = ledger_problems(engine)
    twice = paid_twice(engine)
    jobs = accepted | run_jobs(engine, s["tenants"])
    b = bills(engine, creds["simulator_url"], jobs, exclusive=args.host is None)
    failover = None
    if s.get("shape") == "failover" and s.get("changes"):
        times = {c["mode"]: datetime.fromisoformat(c["at"]) for c in s["changes"]}
        failover = failover_report(engine, s["backend"], times["down"], times.get("up"),
                                   s["tenants"])
    engine.dispose()

    fail_ratio = s["failures"] / s["requests"] if s["requests"] else 1.0
    paid = twice + len(b.billed_twice) + sum(b.created_beyond_attempts.values())
    overrun = len(sampler.overruns)
    print(f"machine: cpus={os.cpu_count()} loadavg_before={load_before[0]:.2f} "
          f"loadavg_after={load_after[0]:.2f} api_cpu_s={api_cpu:.1f}"
          + (f" api_cpu_ms_per_request={api_cpu * 1000 / s['requests']:.2f}"
             if target.api_pids and s["requests"] else ""))
    print(cpu_line)
    history = out / f"{args.shape}_stats_history.csv"
    for level in levels(history) if history.exists() else []:
        print(f"level: {level}")
    print(f"load: shape={s['shape']} peak_users={s['peak_users']} duration_s={s['duration_s']} "
          f"requests={s['requests']} failures={s['failures']} rate_limited={s['rate_limited']} "
          f"user_errors={s.get('user_errors', 0)}")
    print("outcomes: " + " ".join(f"{k}={v}" for k, v in sorted(said.items())))
    print(f"jobs: run={d.jobs} accepted={len(accepted)} unreported={d.unreported} "
          f"lost={len(d.lost)} unsettled={len(d.unsettled)} drained_in_s={d.waited_s:.1f}")
    print(f"budgets: samples={sampler.samples} sample_errors={sampler.errors} "
          f"overruns={overrun} periods_with_excess={len(sampler.periods_with_excess)} "
          f"max_utilisation={sampler.max_utilisation:.3f}")
    print(f"money: ledger_audit_problems={len(problems)} paid_twice_entries={twice} "
          f"bills={b.bills} billed_usd={b.billed_micros / 1e6:.2f} "
          f"billed_twice={len(b.billed_twice)} "
          f"created_beyond_attempts={sum(b.created_beyond_attempts.values())} "
          f"charged_vs_billed_mismatch={len(b.charged_vs_billed)}")
    if failover is not None:
        print("failover: " + json.dumps(failover, default=str))
    for e in s.get("errors", [])[:10]:
        print(f"error x{e['occurrences']}: {e['method']} {e['name']}: {e['error']}")
    for m in s.get("user_error_messages", []):
        print(f"user error {m}")
    for p in problems[:10]:
        print(f"audit: {p}")
    for what, items in (("lost", d.lost), ("unsettled", d.unsettled),
                        ("billed twice", b.billed_twice),
                        ("charged != billed", b.charged_vs_billed)):
        if items:
            print(f"{what}: {', '.join(items[:10])}{' …' if len(items) > 10 else ''}")
    for o in sampler.overruns[:10]:
        print(f"overrun: period {o.period_id} committed={o.committed} held={o.held} "
              f"limit={o.limit} excess={o.excess}")

    if d.lost:
        misses.append(f"{len(d.lost)} jobs lost")
    if d.unsettled:
        misses.append(f"{len(d.unsettled)} jobs still owe work")
    if problems:
        misses.append(f"{len(problems)} ledger audit problems")
    if paid:
        misses.append(f"paid twice: {paid}")
    if overrun:
        misses.append(f"{overrun} budget overruns")
    if (unread := sampler.unchecked()) is not None:
        misses.append(unread)
    if b.charged_vs_billed:
        misses.append(f"{len(b.charged_vs_billed)} jobs charged other than billed")
    if s["p95_ms"] > args.max_p95_ms:
        misses.append(f"p95 {s['p95_ms']} ms > {args.max_p95_ms:g} ms")
    if fail_ratio > args.max_fail_ratio:
        misses.append(f"fail ratio {fail_ratio:.4f} > {args.max_fail_ratio:g}")
    if not accepted:
        misses.append("no job was accepted")
    if s.get("user_errors"):
        misses.append(f"{s['user_errors']} errors in the users' tasks (no request counts them; "
                      "see 'user error' above)")
    figures = {"users": s["peak_users"], "rps": f"{s['rps']:.1f}",
               "p50_ms": f"{s['p50_ms']:.0f}", "p95_ms": f"{s['p95_ms']:.0f}",
               "p99_ms": f"{s['p99_ms']:.0f}", "fail_ratio": f"{fail_ratio:.4f}",
               "jobs": len(accepted), "lost": len(d.lost), "paid_twice": paid,
               "overrun": overrun}
    return Outcome(figures, misses)


def _profile(args: argparse.Namespace, target: Target, out: Path
             ) -> subprocess.Popen[bytes] | None:
    """With ``--profile``: py-spy samples the first API process for the run (a flame graph
    in ``api-profile.svg``; py-spy needs ptrace, i.e. root or CAP_SYS_PTRACE)."""
    if not args.profile or not target.api_pids:
        return None
    seconds = _seconds(args.run_time)
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
         str(target.api_pids[0]), "--duration", str(seconds), "--rate", "50", "--nonblocking",
         "--output", str(out / "api-profile.svg")],
        stdout=(out / "py-spy.log").open("wb"), stderr=subprocess.STDOUT)


def _seconds(run_time: str) -> int:
    """Locust's ``-t`` (``90``, ``90s``, ``5m``, ``1h30m``) in seconds."""
    total, number = 0, ""
    for ch in run_time:
        if ch.isdigit():
            number += ch
        else:
            total += int(number or 0) * {"s": 1, "m": 60, "h": 3600}[ch]
            number = ""
    return total + int(number or 0)


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    out = args.results / args.shape
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    system: AbstractContextManager[Target] = (
        existing(args.host, args.credentials) if args.host
        else orchestrator_up(logs_to=out / "system-logs"))
    print(f"loadtest: shape={args.shape} users={args.users} spawn_rate={args.spawn_rate:g} "
          f"run_time={args.run_time} target={args.host or 'orchestrator up'} results={out}",
          flush=True)
    with system as target:
        if args.video_ms is not None:
            set_prediction_duration(target, args.video_ms)
        result = check(args, target, out, extra)
    for miss in result.misses:
        print(f"MISS: {miss}")
    print(" ".join(f"{k}={v}" for k, v in result.figures.items()))
    return 1 if result.misses else 0


if __name__ == "__main__":
    sys.exit(main())
