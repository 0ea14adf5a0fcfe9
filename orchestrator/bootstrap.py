"""The composition root: one place that builds the engine, ledger, catalogue, health store,
adapters, runner and submitter from settings. Entry points (API, workers, CLI) call
``container()`` and nothing else wires dependencies. (The Celery enqueue adapter is imported
only when first needed: ``workers`` depends on ``orchestrator``, never the other way round at
import time.)"""

from __future__ import annotations

import threading
from datetime import timedelta
from functools import cached_property

import httpx
from sqlalchemy import Engine

from orchestrator.backends.base import BackendAdapter
from orchestrator.backends.registry import make_adapter
from orchestrator.backends.transport import Http11Transport
from orchestrator.domain.breaker import BreakerPolicy
from orchestrator.domain.catalogue import Catalogue, load_catalogue
from orchestrator.domain.polling import PollPolicy
from orchestrator.egress import EgressPolicy
from orchestrator.events.endpoints import SigningSecrets
from orchestrator.health.store import HealthStore
from orchestrator.ledger import Ledger
from orchestrator.ledger.service import utcnow
from orchestrator.notify.settings import SmtpSettings, load_smtp_settings
from orchestrator.secrets import SecretBox, load_keys
from orchestrator.service.cache import ResultCache
from orchestrator.service.calibration import Calibrator
from orchestrator.service.observe import JobObserver
from orchestrator.service.ports import EnqueuePort
from orchestrator.service.runner import JobRunner
from orchestrator.service.submission import Submitter
from orchestrator.settings import Settings, get_settings, resolve_urls
from orchestrator.store.engine import make_engine


class Container:
    def __init__(self, settings: Settings, enqueue: EnqueuePort | None = None) -> None:
        self.settings = settings
        self.database_url, self.redis_url = resolve_urls(settings)
        self._enqueue = enqueue
        self._adapters: dict[str, BackendAdapter] = {}
        self._lock = threading.Lock()

    @cached_property
    def engine(self) -> Engine:
        s = self.settings
        return make_engine(self.database_url, pool_size=s.db_pool_size,
                           max_overflow=s.db_pool_size, connect_timeout_s=s.db_connect_timeout_s,
                           pool_timeout_s=s.db_pool_timeout_s)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.engine, clock=utcnow,
                      hold_ttl=timedelta(seconds=self.settings.hold_ttl_s))

    @cached_property
    def catalogue_value(self) -> Catalogue:
        return load_catalogue(self.settings.backends_path())

    def catalogue(self) -> Catalogue:
        return self.catalogue_value

    @cached_property
    def health(self) -> HealthStore:
        policy = BreakerPolicy(cooldown_base_s=self.settings.breaker_cooldown_s,
                               cooldown_cap_s=self.settings.breaker_cooldown_cap_s)
        t = self.settings.redis_timeout_s  # a Redis down fails the step fast (retried)
        return HealthStore.from_url(self.redis_url, policy=policy, socket_timeout=t,
                                    socket_connect_timeout=t)

    @cached_property
    def transport(self) -> httpx.BaseTransport:
        """The backends' HTTP wire, shared by every adapter (keep-alive per origin)."""
        return Http11Transport()

    def adapter(self, name: str) -> BackendAdapter:
        found = self._adapters.get(name)  # every job step asks: no lock once it exists
        if found is not None:
            return found
        with self._lock:
            if name not in self._adapters:
                self._adapters[name] = make_adapter(self.catalogue().get(name), self.transport)
            return self._adapters[name]

    @cached_property
    def runner(self) -> JobRunner:
        s = self.settings
        return JobRunner(self.engine, self.ledger, self.catalogue, self.health, self.adapter,
                         utcnow, PollPolicy(s.poll_min_s, s.poll_max_s, s.chain_grace_s),
                         observer=self.observer, enqueue=self.enqueue, cache=self.cache)

    @cached_property
    def observer(self) -> JobObserver:
        """Metrics and log events of the job chain (the process-wide recorder)."""
        return JobObserver()

    @cached_property
    def enqueue(self) -> EnqueuePort:
        if self._enqueue is None:
            from workers.enqueue import CeleryEnqueue

            self._enqueue = CeleryEnqueue()
        return self._enqueue

    @cached_property
    def submitter(self) -> Submitter:
        return Submitter(self.engine, self.ledger, self.catalogue, self.health, self.enqueue,
                         utcnow, timedelta(seconds=self.settings.start_grace_s),
                         egress=self.egress, cache=self.cache, calibrator=self.calibrator,
                         signing_secret=lambda t: self.signing_secrets.check(t))

    @cached_property
    def signing_secrets(self) -> SigningSecrets:
        """Tenants' webhook signing secrets, made on first need (orchestrator.events)."""
        return SigningSecrets(self.engine, self.secrets)

    @cached_property
    def cache(self) -> ResultCache:
        """The result cache (ORCH_CACHE_TTL_S, ORCH_CACHE_DEFAULT_TENANTS)."""
        s = self.settings
        return ResultCache(self.engine, ttl_s=s.cache_ttl_s,
                           default_tenants=s.cache_tenants(), enqueue=self.enqueue)

    @cached_property
    def calibrator(self) -> Calibrator:
        """Routing's calibration factors (ORCH_CALIBRATION_*)."""
        s = self.settings
        return Calibrator(self.engine, self.catalogue, window=s.calibration_window,
                          min_samples=s.calibration_min_samples,
                          refresh_s=s.calibration_refresh_s,
                          max_age_s=s.calibration_max_age_s)

    @cached_property
    def egress(self) -> EgressPolicy:
        """What user-supplied URLs may reach (ORCH_EGRESS_ALLOW)."""
        return EgressPolicy.from_settings(self.settings)

    @cached_property
    def smtp(self) -> SmtpSettings:
        """The email channel's ORCH_SMTP_* settings, as this process reads them (a budget's
        email channel is refused at save without ORCH_SMTP_HOST)."""
        return load_smtp_settings()

    @cached_property
    def secrets(self) -> SecretBox | None:
        """The keys of channel secrets (ORCH_SECRET_KEY or <data_dir>/secret.key); None when
        neither is set."""
        return load_keys(self.settings)


_container: Container | None = None
_container_lock = threading.Lock()


def container() -> Container:
    global _container
    if _container is not None:  # every task asks: no lock once it exists
        return _container
    with _container_lock:
        if _container is None:
            _container = Container(get_settings())
        return _container
