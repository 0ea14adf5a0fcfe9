"""The ``orchestrator`` command. Every command exits non-zero with a one-line reason on failure."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.backup import register as register_backup_commands
from orchestrator.cli.client import register as register_client_commands
from orchestrator.cli.errors import errors_as_one_line, fail, one_line_errors, say
from orchestrator.cli.ledger import register as register_ledger_commands
from orchestrator.cli.report import register as register_report_command
from orchestrator.cli.secrets import register as register_secrets_commands
from orchestrator.errors import OrchestratorError

try:  # a typer that runs its own copy of click: click's errors are TyperExceptions
    from typer import TyperException as CommandLineError
except ImportError:  # an older typer runs click itself
    from click import ClickException as CommandLineError  # type: ignore[assignment]

# pretty exceptions off: a bug's traceback is Python's plain one, not a boxed page that may
# show local variables (a key, a URL with its password)
app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__,
                  pretty_exceptions_enable=False)
budgets_app = typer.Typer(no_args_is_help=True, help="Create, update and list budgets.")
app.add_typer(budgets_app, name="budgets")
monitoring_app = typer.Typer(no_args_is_help=True, help="Cloud Monitoring as code.")
app.add_typer(monitoring_app, name="monitoring")

def _database_url() -> str:
    from orchestrator.settings import get_settings, resolve_database_url

    return resolve_database_url(get_settings())


@app.command()
@one_line_errors
def migrate(
    revision: Annotated[str, typer.Option(help="target revision")] = "head",
) -> None:
    """Apply database migrations (ORCH_DATABASE_URL, or the running embedded database)."""
    from orchestrator.store.migrate import MigrationError, upgrade

    try:
        upgrade(_database_url(), revision)
    except MigrationError as exc:  # Alembic's own: a revision that does not exist, …
        fail(str(exc))
    typer.echo(f"migrated to {revision}")


def _os_reason(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or type(exc).__name__}{where}"


@app.command()
@errors_as_one_line((OSError, _os_reason))
def up(
    data_dir: Annotated[Path | None, typer.Option(
        help="where embedded services keep data (default: ORCH_DATA_DIR, else "
             "./.orchestrator)", show_default=False)] = None,
    port: Annotated[int, typer.Option(help="API port", min=1, max=65535)] = 8000,
    no_simulator: Annotated[bool, typer.Option("--no-simulator")] = False,
) -> None:
    """Run the whole system: embedded PostgreSQL and Redis (or the configured URLs), API,
    worker, beat and simulator. Ctrl-C, SIGTERM or a closed terminal (SIGHUP) stops every
    process."""
    from orchestrator.runtime.signals import sigint_also_sets
    from orchestrator.runtime.up import StartInterrupted, System
    from orchestrator.settings import get_settings

    data_dir = data_dir or get_settings().data_dir
    system = System(get_settings(), data_dir, port, not no_simulator, typer.echo)
    ctrl_c = threading.Event()
    sigint_also_sets(system.stop_event, ctrl_c)
    signal.signal(signal.SIGTERM, lambda *_: system.stop_event.set())
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # not under nohup
        # the children run in sessions of their own: a closed terminal reaches only `up`
        signal.signal(signal.SIGHUP, lambda *_: system.stop_event.set())
    try:
        try:
            creds = system.start()
        except StartInterrupted:  # SIGTERM, SIGHUP or Ctrl-C while starting: a stop asked for
            if ctrl_c.is_set():  # its KeyboardInterrupt was dropped: the status it would give
                raise typer.Exit(130) from None
            return
        typer.echo(f"API:        {creds['api_url']}  (docs at {creds['api_url']}/docs)")
        if system.settings.console_enabled:
            typer.echo(f"console:    {creds['api_url']}/console  (sign in with a key below)")
        typer.echo(f"admin key:  {creds['admin_key']}")
        typer.echo(f"tenant key: {creds['tenant_key']}  (tenant {creds['tenant']})")
        typer.echo(f"simulator:  {creds['simulator_url']}" if not no_simulator else
                   "simulator:  off")
        typer.echo(f"credentials in {data_dir / 'credentials.json'}; logs in {data_dir / 'logs'}")
        typer.echo("running; Ctrl-C or SIGTERM stops every process")
        with contextlib.suppress(KeyboardInterrupt):
            system.supervise()
    finally:
        # a second Ctrl-C while the children stop would leave the rest of them running
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if system.started:  # a start refused at its checks (one line) started nothing
            system.stop()
            typer.echo("stopped")


def _startup_checks(*, secret_key: bool = False) -> None:
    """Configuration that would otherwise fail later and less clearly (every request that
    routes a 500, every alert run a traceback) stops a process at its start, in one line:
    the backend catalogue and the ``ORCH_SMTP_*`` settings, and for the processes that open
    channel secrets (the API, the workers' deliveries) ``ORCH_SECRET_KEY`` or its key file."""
    from orchestrator.domain.catalogue import load_catalogue
    from orchestrator.notify.settings import load_smtp_settings
    from orchestrator.secrets import load_keys
    from orchestrator.settings import get_settings

    load_catalogue(get_settings().backends_path())
    load_smtp_settings()
    if secret_key:
        load_keys(get_settings())


def _schema_check() -> None:
    """The API and the workers run statements of the newest migration: on a database whose
    schema is older they stop at their start, in one line, rather than answer 500s (the API
    even reported itself ready) or fail every task."""
    from orchestrator.store.migrate import schema_behind

    problem = schema_behind(_database_url())
    if problem is not None:
        fail(problem)


@app.command()
@one_line_errors
def api(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    fd: Annotated[int | None, typer.Option(
        help="serve on this inherited listening socket instead of host:port")] = None,
) -> None:
    """Serve the HTTP API."""
    from orchestrator.logs import configure_logging_from_settings

    configure_logging_from_settings()
    _startup_checks(secret_key=True)
    _schema_check()
    from orchestrator.api import serve
    from orchestrator.api.config import ApiConfig
    from orchestrator.settings import get_settings

    serve(host, port, config=ApiConfig.from_settings(get_settings()), fd=fd)


@monitoring_app.command("apply")
@one_line_errors
def monitoring_apply(
    dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
    config_dir: Annotated[Path | None, typer.Option(
        help="alert_policies.yaml, slos.yaml and the dashboard; default: config/monitoring "
             "in the working directory, else the source checkout's")] = None,
) -> None:
    """Create or update metric descriptors, alert policies, SLOs and the dashboard in Cloud
    Monitoring (config/monitoring/); a second run changes nothing."""
    from orchestrator.metrics import apply_monitoring
    from orchestrator.settings import get_settings

    s = get_settings()
    if not s.gcp_project:
        fail("ORCH_GCP_PROJECT is not set")
    report = apply_monitoring(s.gcp_project, endpoint=s.gcp_monitoring_endpoint,
                              config_dir=config_dir, dry_run=dry_run)
    typer.echo(report.summary())


def _print_budgets(db_url: str, as_json: bool = False) -> None:
    from orchestrator.api.views import budget_resource
    from orchestrator.domain.money import format_usd
    from orchestrator.ledger.budgets import list_budgets
    from orchestrator.store.engine import make_engine

    engine = make_engine(db_url, pool_size=1)
    now = datetime.now(UTC)
    try:
        with engine.connect() as conn:
            views = list_budgets(conn, now=now)
    finally:
        engine.dispose()
    if as_json:  # the API's budget resource, so scripts see one shape
        typer.echo(json.dumps({"budgets": [budget_resource(v, now) for v in views]}, indent=2))
        return
    if not views:
        typer.echo("no budgets yet (orchestrator budgets set --scope tenant:T --period month "
                   "--limit-usd 100)")
        return
    typer.echo(f"{'scope':32} {'period':6} {'limit':>14} {'committed':>14} {'held':>14} "
               f"{'remaining':>14}")
    for v in views:
        typer.echo(
            f"{v.scope:32} {v.period:6} {format_usd(v.limit_micros):>14} "
            f"{format_usd(v.committed_micros):>14} {format_usd(v.held_micros):>14} "
            f"{format_usd(v.remaining_micros):>14}"
        )


_LOGLEVEL_HELP = "DEBUG, INFO, WARNING or ERROR; default: ORCH_LOG_LEVEL"


@app.command()
@one_line_errors
def worker(
    concurrency: Annotated[int, typer.Option(help="threads (the work is I/O-bound)")] = 0,
    loglevel: Annotated[str | None, typer.Option(help=_LOGLEVEL_HELP)] = None,
) -> None:
    """Run a Celery worker (thread pool) on every job queue and the maintenance queue."""
    from orchestrator.logs import configure_logging_from_settings

    configure_logging_from_settings()
    _startup_checks(secret_key=True)
    _schema_check()
    from orchestrator.settings import get_settings
    from workers.celery_app import QUEUES
    from workers.celery_app import app as celery

    settings = get_settings()
    n = concurrency or settings.worker_concurrency
    celery.worker_main(["worker", "--pool", "threads", "-c", str(n), "-Q", ",".join(QUEUES),
                        "--loglevel", loglevel or settings.log_level])


@app.command()
@one_line_errors
def beat(
    loglevel: Annotated[str | None, typer.Option(help=_LOGLEVEL_HELP)] = None,
    schedule: Annotated[str, typer.Option(help="beat's schedule file")] = "celerybeat-schedule",
) -> None:
    """Run Celery beat: the sweeper, alert delivery and metric gauges."""
    from orchestrator.logs import configure_logging_from_settings

    configure_logging_from_settings()
    _startup_checks()
    from orchestrator.settings import get_settings
    from workers.celery_app import app as celery

    celery.start(["beat", "--loglevel", loglevel or get_settings().log_level,
                  "--schedule", schedule])


@app.command()
@one_line_errors
def simulator(
    host: Annotated[str | None, typer.Option(help="default: from ORCH_SIMULATOR_URL")] = None,
    port: Annotated[int | None, typer.Option(help="default: from ORCH_SIMULATOR_URL")] = None,
) -> None:
    """Serve the simulated providers of the catalogue (ORCH_BACKENDS_FILE)."""
    from orchestrator.simulator import serve

    serve(host, port)


@budgets_app.command("set")
@one_line_errors
def budgets_set(
    scope: Annotated[str, typer.Option(help="global | tenant:T | tenant:T/project:P")],
    period: Annotated[str, typer.Option(help="day | month | total")],
    limit_usd: Annotated[float, typer.Option(help="limit in USD")],
    thresholds: Annotated[
        str | None, typer.Option(help="alert thresholds as fractions, comma-separated "
                                      "(default: keep the budget's; 0.5,0.8,1.0 for a new one)")
    ] = None,
    forecast: Annotated[
        str | None, typer.Option(help="forecast alert thresholds as fractions, e.g. 1.0 "
                                      "(default: keep the budget's; none for a new one)")
    ] = None,
) -> None:
    """Create or update a budget. What is not given is kept: its thresholds unless
    --thresholds/--forecast, and its alert channels (set through PUT /v1/budgets)."""
    from orchestrator.domain.budgets import MAX_LIMIT_USD, Period, validate_scope
    from orchestrator.domain.money import exact_usd, format_usd, usd_to_micros
    from orchestrator.ledger.budgets import set_budget
    from orchestrator.store.engine import make_engine

    # the API's bounds and precision (BudgetIn), so that what one takes the other takes too
    if not (math.isfinite(limit_usd) and 0 <= limit_usd <= MAX_LIMIT_USD):
        fail(f"--limit-usd must be a number from 0 to {MAX_LIMIT_USD:,} (as PUT /v1/budgets)",
             2)
    try:
        exact_usd(limit_usd)
    except ValueError as exc:
        fail(f"--limit-usd {exc}", 2)
    try:
        Period(period)
    except ValueError:
        fail(f"--period must be day, month or total, not {period!r}", 2)
    try:
        validate_scope(scope)
    except ValueError as exc:
        fail(f"--scope: {exc}", 2)
    try:  # None: set_budget keeps the budget's own
        bps, forecast_bps = _fractions_bp(thresholds), _fractions_bp(forecast)
    except ValueError as exc:
        fail(f"--thresholds/--forecast: {exc}", 2)
    engine = make_engine(_database_url(), pool_size=1)
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            # channels None: the upsert keeps the budget's own (a PUT meanwhile is not undone)
            set_budget(
                conn, scope=scope, period=period, limit_micros=usd_to_micros(limit_usd),
                now=now, thresholds_bp=bps, channels=None,
                forecast_thresholds_bp=forecast_bps,
            )
    finally:
        engine.dispose()
    typer.echo(f"budget {scope} {period} set to {format_usd(usd_to_micros(limit_usd))}")


def _fractions_bp(option: str | None) -> tuple[int, ...] | None:
    """``--thresholds 0.5,0.8`` as basis points; None when the option is not given."""
    from orchestrator.domain.budgets import thresholds_to_bp

    if option is None:
        return None
    return thresholds_to_bp([float(x) for x in option.split(",") if x.strip()])


@budgets_app.command("list")
@one_line_errors
def budgets_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List budgets with the current period's spend."""
    _print_budgets(_database_url(), as_json=json_out)


register_client_commands(app)
register_report_command(app)
register_secrets_commands(app)
register_backup_commands(app)
register_ledger_commands(app)


def main() -> None:
    """``orchestrator``: exits with the command's status; a usage error is one line."""
    sys.exit(run(sys.argv[1:]))


def run(args: list[str]) -> int:
    """Run the app outside click's standalone mode: in it, click would print a usage error
    as a usage line, a hint and a rich box. Returns the exit status."""
    try:
        status = app(args=args, standalone_mode=False)
    except CommandLineError as exc:
        # by name, as typer does: an older click has no NoArgsIsHelpError (it exits 0)
        if type(exc).__name__ == "NoArgsIsHelpError":
            _no_args_help(exc)
        else:  # a usage error: a missing option, a bad value, no such command (status 2)
            say(exc.format_message())
        return exc.exit_code
    except typer.Abort:  # Ctrl-D at a prompt
        say("aborted")
        return 1
    except OrchestratorError as exc:  # settings errors raised before a command runs
        say(exc.message)
        return 1
    # a command's typer.Exit (fail()) or --help's comes back as its status; a command returns
    # None
    return status if isinstance(status, int) else 0


def _no_args_help(exc: CommandLineError) -> None:
    """The help for a group run with no command, on stdout as in standalone mode. Typer's
    rich help is printed while the error is made and leaves its message empty; click's
    plain help is the message."""
    if exc.format_message():
        typer.echo(exc.format_message())

