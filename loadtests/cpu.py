"""Where the machine's CPU went during a run: seconds per role of the system under load
(the process tree of ``orchestrator up``: api, worker, beat, simulator, postgres, redis) and
of Locust itself, which shares the machine when it runs there too. A role's figure counts
its processes alive at the end (PostgreSQL backends that came and went are missed)."""

from __future__ import annotations

import resource
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import psutil


def _role(proc: psutil.Process) -> str:
    try:
        argv = proc.cmdline()
        name = proc.name()
    except psutil.Error:
        return "other"
    if argv[1:3] == ["-m", "orchestrator.cli"] and len(argv) > 3:
        return str(argv[3])
    for known in ("postgres", "redis", "celery"):
        if known in name or (argv and known in argv[0]):
            return "worker" if known == "celery" else known
    return name or "other"


def system_roots(up_pid: int | None, data_dir: Path, redis_url: str | None) -> list[int]:
    """``up`` and the servers it started that left its tree when they daemonized: the
    PostgreSQL whose command line names ``data_dir``, the Redis listening on the port of
    ``redis_url``."""
    if up_pid is None:
        return []
    roots = [up_pid]
    port = f":{urlsplit(redis_url).port}" if redis_url else None
    for proc in psutil.process_iter(["cmdline"]):
        argv = " ".join(proc.info["cmdline"] or []).split()  # redis pads its title
        ours = any(str(data_dir) in arg for arg in argv) or bool(
            port and argv and "redis-server" in argv[0] and argv[-1].endswith(port))
        if ours and proc.pid != up_pid:
            roots.append(proc.pid)
    return roots


def tree_cpu(roots: list[int]) -> Counter[str]:
    """CPU seconds (user + system) so far of ``roots`` and every process under them, by
    role."""
    total: Counter[str] = Counter()
    procs: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            procs.update({p.pid: p for p in [root, *root.children(recursive=True)]})
        except psutil.Error:
            continue
    procs.pop(roots[0] if roots else -1, None)  # `up` itself only waits on its children
    for proc in procs.values():
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total[_role(proc)] += t.user + t.system
    return total


def children_cpu() -> float:
    """CPU seconds of this process's children that ended (Locust, once it has run)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def line(before: Counter[str], after: Counter[str], locust_s: float, wall_s: float,
         cpus: int) -> str:
    """``cpu: api=…`` in CPU seconds per role over the run, and the machine's capacity."""
    roles = sorted(set(after) | set(before), key=lambda r: -(after[r] - before[r]))
    parts = [f"{role}={after[role] - before[role]:.1f}" for role in roles
             if after[role] - before[role] >= 0.05]
    used = sum(after[r] - before[r] for r in roles) + locust_s
    return (f"cpu_s: {' '.join(parts)} locust={locust_s:.1f} total={used:.1f} "
            f"available={wall_s * cpus:.1f}")
