"""Safe defaults for ``celery -A workers.celery_app flower``: 127.0.0.1, behind basic auth.

Flower on its own listens on every interface and serves its pages (workers, tasks, their
arguments; buttons that shut workers down) to anyone. Flower reads its options from the
command line, a ``flowerconfig.py`` in the working directory and ``FLOWER_*`` variables, each
of which wins over the option's default; the Celery app's conf is not among them. So when
``workers.celery_app`` is loaded by ``celery … flower`` (:func:`for_flower_command`), the
defaults of Flower's own options become:

- ``address`` 127.0.0.1 (``--address``/``FLOWER_ADDRESS`` still choose another);
- ``basic_auth`` ``<ORCH_FLOWER_USER>:<password>`` (user ``flower`` by default), the password
  from ``ORCH_FLOWER_PASSWORD``, else generated once into ``<data dir>/flower.password``
  (0600); ``--basic-auth``/``FLOWER_BASIC_AUTH`` still replace it.

One line on stderr says where the password is (never the password itself).
"""

from __future__ import annotations

import sys

from orchestrator.embedded.private import private_dir, private_secret
from orchestrator.settings import Settings

PASSWORD_FILE = "flower.password"
ADDRESS = "127.0.0.1"


def flower_credentials(settings: Settings) -> tuple[str, str, str]:
    """(user, password, where the password comes from)."""
    if settings.flower_password is not None and settings.flower_password.get_secret_value():
        return settings.flower_user, settings.flower_password.get_secret_value(), \
            "ORCH_FLOWER_PASSWORD"
    private_dir(settings.data_dir)
    path = settings.data_dir / PASSWORD_FILE
    return settings.flower_user, private_secret(path), str(path.absolute())


def apply_defaults(settings: Settings) -> None:
    """Make 127.0.0.1 and basic auth the defaults of Flower's (tornado) options."""
    import flower.options  # noqa: F401  (defines the options, if the command has not yet)
    from tornado.options import options

    user, password, source = flower_credentials(settings)
    options.address = ADDRESS
    options.basic_auth = [f"{user}:{password}"]
    print(f"flower: on {ADDRESS} unless --address says otherwise; basic auth user {user!r}, "
          f"password in {source}", file=sys.stderr)


def for_flower_command(settings: Settings) -> None:
    """Apply the defaults if the command loading the app is ``celery … flower``: the click
    context that imports ``-A workers.celery_app`` is the ``celery`` group's, and it knows its
    subcommand before its callback loads the app."""
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.invoked_subcommand == "flower":
        apply_defaults(settings)
