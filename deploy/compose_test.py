#!/usr/bin/env python3
"""`make compose-test`: the compose stack, for real, on this machine's Docker.

Builds the image, starts compose.yaml (`up -d`, waiting until every service is healthy and
the migration has exited 0), creates an admin and a tenant key with `docker compose run --rm
api orchestrator keys create …`, sets the tenant's budget (PUT /v1/budgets with the admin key,
with a webhook channel: ORCH_SECRET_KEY and ORCH_EGRESS_ALLOW at work), submits video, image
and text jobs against the simulator through the published API, checks that each succeeds and
is charged (cost_usd > 0, the budget's committed_usd their sum, nothing left held), scales the
workers to 3 (`up -d --scale worker=3 --no-recreate`; Flower, behind basic auth, must list
three), submits and checks more, takes a backup into the backups volume, and stops the
stack with its volumes (`down -v`).

Images: BASE_IMAGE, POSTGRES_IMAGE and REDIS_IMAGE from the environment if set; else the
official ones (python:3.11-slim, postgres:18, redis:7), pulled if they are not here; where
they cannot be pulled, the offline stand-ins of deploy/local-images.sh (built if missing).
A CA bundle in SSL_CERT_FILE / PIP_CERT / REQUESTS_CA_BUNDLE is given to the build as the
BuildKit secret pip_ca (for a TLS-intercepting proxy), and the test then checks that none of
its certificates that the base image does not have is anywhere in the built image.

Runs as the compose project `orchcomposetest` with its own env file (random passwords, free
ports), so it leaves a developer's stack and .env alone. Exit 0 with the last line
`compose_ok=1 services=N jobs_succeeded=N seconds=S`; on any failure, diagnostics on stderr,
the stack removed (COMPOSE_TEST_KEEP=1 leaves it up) and a last line
`compose_test: FAIL: <reason>` with exit 1. Standard library only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "orchcomposetest"
IMAGE = "orchestrator:compose-test"
TENANT = "compose-test"
OFFICIAL = {  # setting: (official image, deploy/local-images.sh target, its stand-in)
    "BASE_IMAGE": ("python:3.11-slim", "python", "orchestrator-local/python:3.11"),
    "POSTGRES_IMAGE": ("postgres:18", "postgres", "orchestrator-local/postgres:15"),
    "REDIS_IMAGE": ("redis:7", "redis", "orchestrator-local/redis:7"),
}
SERVICES = {"postgres", "redis", "migrate", "api", "worker", "beat", "flower", "simulator"}
ONE_SHOT = {"migrate"}
JOBS = [  # kind, input: one of each kind against the simulator's backends
    ("video", {"prompt": "a lighthouse at dusk", "duration_s": 4, "resolution": "720p"}),
    ("image", {"prompt": "a red cube", "n": 1, "size": "512x512"}),
    ("text", {"prompt": "say hello", "max_tokens": 64}),
]
UP_TIMEOUT_S = 300
JOB_TIMEOUT_S = 180


class Fail(Exception):
    """A one-line reason the test failed."""


def say(msg: str) -> None:
    print(f"compose-test: {msg}", flush=True)


def run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 600,
        check: bool = True, what: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Fail(f"{what or ' '.join(cmd[:4])}: no answer in {timeout:.0f} s") from None
    except FileNotFoundError:
        raise Fail(f"{cmd[0]}: not found") from None
    if check and proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise Fail(f"{what or ' '.join(cmd[:4])}: exit {proc.returncode}: {last[:300]}")
    return proc


def ok(cmd: list[str], timeout: float = 60) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- Docker, Compose, BuildKit -----------------------------------------------------------------

def compose_command() -> tuple[list[str], bool]:
    """The compose command (the v2 plugin, else a standalone docker-compose) and whether its
    `up` has --wait."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if ok([*cmd, "version"]):
            helptext = run([*cmd, "up", "--help"], check=False).stdout
            return cmd, "--wait" in helptext
    raise Fail("neither `docker compose` nor `docker-compose` is installed")


def buildkit_docker() -> str:
    """A docker client that builds with BuildKit (RUN --mount=type=secret): one with the buildx
    plugin, or one from before 23.0, which has BuildKit built in."""
    if ok(["docker", "buildx", "version"]):
        return "docker"
    seen = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        exe = Path(d) / "docker"
        if exe.is_file() and os.access(exe, os.X_OK) and exe.resolve() not in seen:
            seen.append(exe.resolve())
            ver = run([str(exe), "version", "--format", "{{.Client.Version}}"],
                      check=False).stdout.strip()
            if ver and ver.split(".")[0].isdigit() and int(ver.split(".")[0]) < 23:
                return str(exe)
    raise Fail("no docker client builds with BuildKit: install the buildx plugin")


def image_exists(ref: str) -> bool:
    return ok(["docker", "image", "inspect", ref])


def resolve_images() -> dict[str, str]:
    chosen: dict[str, str] = {}
    notes = []
    for setting, (official, target, standin) in OFFICIAL.items():
        if os.environ.get(setting):
            ref = os.environ[setting]
            if not image_exists(ref):
                run(["docker", "pull", ref], timeout=600, what=f"docker pull {ref}")
            chosen[setting], how = ref, "from the environment"
        elif image_exists(official):
            chosen[setting], how = official, "present"
        elif ok(["docker", "pull", official], timeout=300):
            chosen[setting], how = official, "pulled"
        else:
            if not image_exists(standin):
                say(f"{official} cannot be pulled: building the stand-in {standin}")
                run(["bash", str(ROOT / "deploy" / "local-images.sh"), target], timeout=900,
                    what=f"deploy/local-images.sh {target}")
            chosen[setting], how = standin, f"local stand-in ({official} cannot be pulled)"
        notes.append(f"{setting}={chosen[setting]} [{how}]")
    say("images: " + "; ".join(notes))
    return chosen


def ca_bundle() -> Path | None:
    for var in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    return None


def build(base_image: str, ca: Path | None) -> float:
    docker = buildkit_docker()
    cmd = [docker, "build", "-t", IMAGE, "--build-arg", f"BASE_IMAGE={base_image}"]
    if ca is not None:
        cmd += ["--secret", f"id=pip_ca,src={ca}"]
    started = time.monotonic()
    log = Path(tempfile.gettempdir()) / f"{PROJECT}-build.log"
    with log.open("w") as out:
        proc = subprocess.run([*cmd, "."], cwd=ROOT, env={**os.environ, "DOCKER_BUILDKIT": "1"},
                              stdout=out, stderr=subprocess.STDOUT, text=True, timeout=1800,
                              stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        sys.stderr.write("".join(log.read_text().splitlines(keepends=True)[-40:]))
        raise Fail(f"docker build failed (exit {proc.returncode}; log in {log})")
    return time.monotonic() - started


def pem_bodies(text: str) -> set[str]:
    return {re.sub(r"\s+", "", m) for m in re.findall(
        r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)}


# Prints every certificate file (.pem, .crt) the installed wheels ship, each checked against
# its wheel's RECORD: "changed <path>" for one that differs.
WHEEL_CERTS = """
import base64, hashlib, importlib.metadata as md
for dist in md.distributions():
    for f in dist.files or ():
        if f.hash and f.name.endswith((".pem", ".crt")):
            data = f.locate().read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.new(f.hash.mode, data).digest())
            if digest.rstrip(b"=").decode() == f.hash.value:
                print(data.decode(errors="replace"))
            else:
                print("changed", f.locate())
"""


def check_ca_not_in_image(ca: Path, base_image: str) -> str:
    """The certificates of the build's CA bundle that are public roots neither of the base
    image nor of a wheel (as its RECORD has it) are the proxy's: they must be nowhere in the
    built image."""
    base = run(["docker", "run", "--rm", "--entrypoint", "sh", base_image, "-c",
                "cat /etc/ssl/certs/ca-certificates.crt 2>/dev/null || true"],
               what="reading the base image's CA bundle").stdout
    wheels = run(["docker", "run", "--rm", "--entrypoint", "python", IMAGE, "-c", WHEEL_CERTS],
                 what="reading the wheels' certificate files").stdout
    changed = [ln.split(" ", 1)[1] for ln in wheels.splitlines() if ln.startswith("changed ")]
    if changed:
        raise Fail(f"certificate files differ from their wheels': {', '.join(changed[:3])}")
    extra = pem_bodies(ca.read_text(errors="replace")) - pem_bodies(base) - pem_bodies(wheels)
    if not extra:
        return "the build's CA bundle has no certificate beyond the public roots"
    needles = []  # the last full line of each certificate as PEM wraps it: its signature
    for body in extra:
        end = len(body) // 64 * 64
        needles += ["-e", body[end - 64:end]]
    proc = run(["docker", "run", "--rm", "--user", "0", "--entrypoint", "grep", IMAGE, "-rlF",
                *needles, "/", "--exclude-dir=proc", "--exclude-dir=sys", "--exclude-dir=dev"],
               check=False, timeout=300, what="searching the image for the build's CA")
    if proc.stdout.strip():
        raise Fail("the build's CA certificate is in the image: "
                   + ", ".join(proc.stdout.split()[:5]))
    if proc.returncode not in (0, 1):
        raise Fail(f"searching the image for the build's CA failed: {proc.stderr.strip()[:200]}")
    return (f"the build's CA bundle has {len(extra)} certificate(s) beyond the public roots; "
            "none is in the image")


# -- the stack ---------------------------------------------------------------------------------

class Stack:
    def __init__(self, compose: list[str], has_wait: bool, images: dict[str, str]) -> None:
        self.compose, self.has_wait = compose, has_wait
        self.api_port, self.flower_port = free_port(), free_port()
        self.flower_password = secrets.token_hex(16)
        values = {
            "ORCH_IMAGE": IMAGE, **images,
            "POSTGRES_PASSWORD": secrets.token_hex(24),
            "REDIS_PASSWORD": secrets.token_hex(24),
            "ORCH_SECRET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "ORCH_FLOWER_USER": "flower",
            "ORCH_FLOWER_PASSWORD": self.flower_password,
            "ORCH_EGRESS_ALLOW": "simulator",  # the budget's webhook channel points there
            "API_PORT": str(self.api_port),
            "FLOWER_PORT": str(self.flower_port),
        }
        fd, name = tempfile.mkstemp(prefix=f"{PROJECT}-", suffix=".env")  # mode 0600
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{k}={v}\n" for k, v in values.items())
        self.env_file = Path(name)
        # the env file decides: nothing of these from the caller's shell
        self.env = {k: v for k, v in os.environ.items()
                    if k not in values and not k.startswith("COMPOSE_")}
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.flower = f"http://127.0.0.1:{self.flower_port}"

    def cmd(self, *args: str, timeout: float = 600, check: bool = True,
            what: str | None = None) -> subprocess.CompletedProcess[str]:
        return run([*self.compose, "-p", PROJECT, "-f", str(ROOT / "compose.yaml"),
                    "--env-file", str(self.env_file), *args],
                   env=self.env, timeout=timeout, check=check,
                   what=what or f"compose {' '.join(args[:3])}")

    def containers(self) -> list[dict[str, Any]]:
        ids = run(["docker", "ps", "-aq", "--filter",
                   f"label=com.docker.compose.project={PROJECT}"]).stdout.split()
        if not ids:
            return []
        return list(json.loads(run(["docker", "inspect", *ids]).stdout))

    def up(self, *args: str) -> None:
        self.cmd("up", "-d", *(["--wait"] if self.has_wait else []), *args,
                 timeout=UP_TIMEOUT_S + 60, what=f"compose up {' '.join(args)}".strip())

    def wait_ready(self, workers: int) -> int:
        """Until every service runs and is healthy and the one-shots exited 0; the number of
        services."""
        deadline = time.monotonic() + UP_TIMEOUT_S
        while True:
            problems, services, n_workers = [], set(), 0
            for c in self.containers():
                svc = c["Config"]["Labels"].get("com.docker.compose.service", "?")
                if c["Config"]["Labels"].get("com.docker.compose.oneoff") == "True":
                    continue  # a `compose run` container
                services.add(svc)
                state = c["State"]
                if svc in ONE_SHOT:
                    if state["Status"] == "exited" and state["ExitCode"] != 0:
                        raise Fail(f"{svc} exited {state['ExitCode']}: {self.last_log(c)}")
                    if state["Status"] != "exited":
                        problems.append(f"{svc} {state['Status']}")
                    continue
                if state["Status"] != "running" or state.get("RestartCount", 0) > 2:
                    if state.get("RestartCount", 0) > 2 or state["Status"] == "exited":
                        raise Fail(f"{svc} is {state['Status']} (restarted "
                                   f"{state.get('RestartCount', 0)} times): {self.last_log(c)}")
                    problems.append(f"{svc} {state['Status']}")
                    continue
                health = (state.get("Health") or {}).get("Status")
                if health != "healthy":
                    problems.append(f"{svc} {health}")
                    continue
                n_workers += svc == "worker"
            missing = SERVICES - services
            if not problems and not missing and n_workers == workers:
                return len(services)
            if time.monotonic() > deadline:
                raise Fail(f"not ready after {UP_TIMEOUT_S} s: "
                           + ", ".join(problems + [f"{m} missing" for m in sorted(missing)]
                                       + [f"{n_workers}/{workers} workers healthy"]))
            time.sleep(2)

    def last_log(self, container: dict[str, Any]) -> str:
        proc = run(["docker", "logs", "--tail", "5", container["Id"]], check=False)
        lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        return lines[-1][:300] if lines else "no output"

    def key(self, *args: str) -> str:
        out = self.cmd("run", "--rm", "-T", "api", "orchestrator", "keys", "create", *args,
                       timeout=180, what=f"keys create {' '.join(args)}")
        found = re.findall(r"\borch_[A-Za-z0-9]+_[A-Za-z0-9_-]+", out.stdout)
        if len(found) != 1:
            raise Fail(f"keys create {' '.join(args)}: expected one key in its output")
        return str(found[0])

    def diagnose(self) -> None:
        sys.stderr.write(self.cmd("ps", check=False, timeout=60).stdout)
        for c in self.containers():
            state = c["State"]
            if state["Status"] != "running" or (state.get("Health") or {}).get(
                    "Status", "healthy") != "healthy" or state.get("RestartCount", 0):
                proc = run(["docker", "logs", "--tail", "30", c["Id"]], check=False)
                sys.stderr.write(f"--- {c['Name']} ({state['Status']})\n"
                                 f"{proc.stdout}{proc.stderr}")

    def down(self) -> None:
        try:
            self.cmd("down", "-v", "--remove-orphans", timeout=300, check=False)
        finally:  # the env file holds the stack's passwords
            self.env_file.unlink(missing_ok=True)


# -- HTTP ----------------------------------------------------------------------------------------

def http(method: str, url: str, *, key: str | None = None, body: Any = None,
         auth: tuple[str, str] | None = None) -> tuple[int, Any]:
    headers = {"accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    if key:
        headers["authorization"] = f"Bearer {key}"
    if auth:
        headers["authorization"] = "Basic " + base64.b64encode(
            f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    except OSError as exc:
        raise Fail(f"{method} {url}: {exc}") from None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def expect(status: int, body: Any, want: int, what: str) -> Any:
    if status != want:
        raise Fail(f"{what}: HTTP {status} (wanted {want}): {str(body)[:300]}")
    return body


def micros(usd: float | None) -> int:
    return round((usd or 0) * 1_000_000)


Job = dict[str, Any]


def run_jobs(stack: Stack, key: str, specs: list[tuple[str, dict[str, Any]]]) -> list[Job]:
    ids = []
    for kind, inp in specs:
        job = expect(*http("POST", f"{stack.api}/v1/jobs", key=key,
                           body={"kind": kind, "input": inp}), 202, f"submit {kind} job")
        ids.append(job["id"])
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while len(done) < len(ids):
        for job_id in ids:
            if job_id not in done:
                job = expect(*http("GET", f"{stack.api}/v1/jobs/{job_id}", key=key), 200,
                             f"get job {job_id}")
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    done[job_id] = job
        if len(done) < len(ids):
            if time.monotonic() > deadline:
                late = [f"{j} {i}" for i, j in zip(ids, [done.get(i, {}).get("status", "open")
                                                          for i in ids], strict=True)]
                raise Fail(f"jobs not finished in {JOB_TIMEOUT_S} s: {', '.join(late)}")
            time.sleep(1)
    jobs = [done[i] for i in ids]
    for job in jobs:
        if job["status"] != "succeeded":
            raise Fail(f"{job['kind']} job {job['id']} {job['status']}: {job.get('error')}")
        if not micros(job["cost_usd"]) > 0:
            raise Fail(f"{job['kind']} job {job['id']} succeeded but was charged "
                       f"{job['cost_usd']}")
    say("jobs succeeded: " + ", ".join(
        f"{j['kind']} on {j['backend']} ${j['cost_usd']}" for j in jobs))
    return jobs


def check_budget(stack: Stack, admin: str, jobs: list[dict[str, Any]]) -> None:
    """committed_usd is the sum of the jobs' costs and nothing is held, once they ended."""
    want = sum(micros(j["cost_usd"]) for j in jobs)
    deadline = time.monotonic() + 60
    while True:
        body = expect(*http("GET", f"{stack.api}/v1/budgets", key=admin), 200, "list budgets")
        budget = next((b for b in body["budgets"]
                       if b["scope"] == f"tenant:{TENANT}" and b["period"] == "month"), None)
        if budget is None:
            raise Fail(f"budget tenant:{TENANT} month is missing")
        got, held = micros(budget["committed_usd"]), micros(budget["held_usd"])
        if got == want and held == 0:
            say(f"budget tenant:{TENANT}: committed ${budget['committed_usd']} = the jobs' "
                f"costs, held $0")
            return
        if time.monotonic() > deadline:
            raise Fail(f"budget committed ${got / 1e6} and held ${held / 1e6}, wanted "
                       f"committed ${want / 1e6} (the jobs' costs) and nothing held")
        time.sleep(1)


def flower_workers(stack: Stack) -> int:
    status, _ = http("GET", f"{stack.flower}/api/workers")
    if status != 401:
        raise Fail(f"Flower answered {status} without credentials (wanted 401)")
    deadline = time.monotonic() + 60
    while True:
        body = expect(*http("GET", f"{stack.flower}/api/workers?refresh=1",
                            auth=("flower", stack.flower_password)), 200, "Flower workers")
        if len(body) == 3 or time.monotonic() > deadline:
            return len(body)
        time.sleep(2)


# -- the test ----------------------------------------------------------------------------------

def main() -> int:
    started = time.monotonic()
    stack: Stack | None = None
    try:
        if not ok(["docker", "info"], timeout=30):
            raise Fail("no Docker daemon answers (`docker info` failed)")
        compose, has_wait = compose_command()
        waits = "up --wait" if has_wait else "no up --wait: polling health"
        say(f"compose: {' '.join(compose)} ({waits})")
        images = resolve_images()
        ca = ca_bundle()
        build_s = build(images["BASE_IMAGE"], ca)
        say(f"built {IMAGE} in {build_s:.0f} s"
            + (f" (pip's CA from {ca} as a build secret)" if ca else ""))
        if ca is not None:
            say(check_ca_not_in_image(ca, images["BASE_IMAGE"]))
        user = run(["docker", "run", "--rm", "--entrypoint", "id", IMAGE, "-u"]).stdout.strip()
        if user == "0":
            raise Fail(f"{IMAGE} runs as root")

        stack = Stack(compose, has_wait, images)
        stack.cmd("down", "-v", "--remove-orphans", check=False)  # a previous run's leftovers
        stack.up()
        n_services = stack.wait_ready(workers=1)
        say(f"{n_services} services up and healthy; API on {stack.api}, Flower on {stack.flower}")

        admin = stack.key("--tenant", "ops", "--admin")
        tenant = stack.key("--tenant", TENANT)
        expect(*http("PUT", f"{stack.api}/v1/budgets", key=admin, body={
            "scope": f"tenant:{TENANT}", "period": "month", "limit_usd": 100,
            "channels": [{"type": "webhook", "url": "http://simulator:8100/_compose_test",
                          "secret": secrets.token_hex(16)}],
        }), 200, "PUT /v1/budgets")
        status, _ = http("PUT", f"{stack.api}/v1/budgets", key=tenant,
                         body={"scope": f"tenant:{TENANT}", "period": "month", "limit_usd": 1})
        if status != 403:
            raise Fail(f"a tenant key set a budget: HTTP {status} (wanted 403)")

        jobs = run_jobs(stack, tenant, JOBS)
        check_budget(stack, admin, jobs)

        stack.up("--scale", "worker=3", "--no-recreate")
        stack.wait_ready(workers=3)
        seen = flower_workers(stack)
        if seen != 3:
            raise Fail(f"Flower lists {seen} workers after scaling to 3")
        say("scaled to 3 workers; Flower (basic auth) lists 3")
        jobs += run_jobs(stack, tenant, JOBS * 2)
        check_budget(stack, admin, jobs)

        out = stack.cmd("run", "--rm", "-T", "api", "orchestrator", "backup", "create",
                        "/backups/compose-test.dump", timeout=300, what="backup create").stdout
        if "backup written" not in out:
            raise Fail(f"backup create said: {out.strip()[:200]}")
        say(out.strip().splitlines()[-1])

        stack.cmd("down", "-v", "--remove-orphans", timeout=300, what="compose down -v")
        left = stack.containers()
        if left:
            raise Fail(f"{len(left)} containers left after down")
        stack.env_file.unlink(missing_ok=True)
        stack = None
        print(f"compose_ok=1 services={n_services} jobs_succeeded={len(jobs)} "
              f"seconds={time.monotonic() - started:.0f}", flush=True)
        return 0
    except (Fail, KeyboardInterrupt, Exception) as exc:
        # anything else too: the stack is taken down (and its env file, with its passwords,
        # removed) and the answer is still one FAIL line
        reason = (str(exc) if isinstance(exc, Fail) else "interrupted"
                  if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}")
        if stack is not None:
            with contextlib.suppress(Exception):  # the stack comes down whatever this does
                stack.diagnose()
            if os.environ.get("COMPOSE_TEST_KEEP") == "1":
                sys.stderr.write(f"left running: compose project {PROJECT}, env file "
                                 f"{stack.env_file}\n")
            else:
                with contextlib.suppress(Exception):
                    stack.down()
        sys.stderr.flush()
        print(f"compose_test: FAIL: {reason}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
