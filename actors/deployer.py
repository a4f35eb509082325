"""Model applications deployed in the background, so the listener serves from the first seconds.

Loading the model replicas (a process each, torch, the weights) is most of a cold start: about
half a minute on a 2-core machine for the five demo families. The composition root starts
Ray, the ledger, the listeners and the stages first, and only then hands the applications to
a ``ModelDeployer``, which deploys them one after the other in a thread of its own. Studies
that arrive meanwhile are stored and acknowledged at once; they wait in the ledger (``linked``)
for their model, which costs no retry: an application that does not exist yet is a peer outage
(``DependencyUnavailable``), and a request to an application still deploying waits in Serve's
queue until its replica is up. When an application is up, ``on_ready`` runs (the pipeline makes
the jobs that wait out the outage due at once, instead of at their next back-off).

The applications are built (``build_model_apps``: torch and Serve imported, every weights file
checked) once the listeners answer, before the stage actors start, and a bad weights file
stops the start; a deployment that fails later is reported (``health``, ``pacsai status``),
and the listener goes on accepting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from core.config import app_name
from core.health import ActorHealth, LoopHealth

__all__ = ["MODELS", "ModelDeployer", "deployed_models", "remove_models"]

logger = logging.getLogger(__name__)

MODELS = "models"
"""The name the model applications' health is recorded under (``pacsai status``)."""

_FAILED = ("DEPLOY_FAILED", "UNHEALTHY")
"""Serve application statuses that are failures, not a wait."""


def _plain(status: str) -> str:
    """``ApplicationStatus.RUNNING`` (as ``str`` of Serve's enum gives it) -> ``RUNNING``."""
    return status.rsplit(".", 1)[-1]


class ModelDeployer:
    """Deploys model applications one after the other in a background thread."""

    def __init__(
        self,
        apps: Mapping[str, Any],
        deploy: Callable[[str, Any], None],
        *,
        prepare: Callable[[], None] | None = None,
        on_ready: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args:
        apps: The built applications by name, in the order to deploy them.
        deploy: Deploys one application and returns when it runs (``serve.run``); raises
            when it cannot.
        prepare: Runs once first, in the thread (start Serve).
        on_ready: Called with each application's name once it runs; its failure is logged.
        clock: Monotonic seconds.
        """
        self._apps = dict(apps)
        self._deploy = deploy
        self._prepare = prepare
        self._on_ready = on_ready
        self._clock = clock
        self._done = threading.Event()
        self._cancelled = False
        self._running: list[str] = []
        self._error: BaseException | None = None
        self._began = 0.0
        self.elapsed_s: float | None = None
        """Seconds from ``start`` until every application ran or one failed (``None``: not yet)."""

    @property
    def names(self) -> list[str]:
        """Every application, in deployment order."""
        return list(self._apps)

    @property
    def done(self) -> bool:
        """Whether the thread finished (every application deployed, or one failed)."""
        return self._done.is_set()

    @property
    def error(self) -> str:
        """Why deploying stopped (``''``: it did not fail)."""
        return "" if self._error is None else f"{type(self._error).__name__}: {self._error}"

    def start(self) -> ModelDeployer:
        """Start deploying in a daemon thread."""
        self._began = self._clock()
        threading.Thread(target=self._run, name="model-deployer", daemon=True).start()
        return self

    def cancel(self) -> None:
        """Deploy nothing more (the pipeline stops); the application in progress finishes."""
        self._cancelled = True

    def _run(self) -> None:
        try:
            if self._prepare is not None:
                self._prepare()
            for name, app in self._apps.items():
                if self._cancelled:
                    return
                self._deploy(name, app)
                self._running.append(name)
                logger.info("model application %s is running", name)
                self._ready(name)
        except Exception as exc:  # the thread's boundary: kept for wait() and health, logged once
            self._error = exc
            if not self._cancelled:
                logger.error("model applications not deployed: %s: %s", type(exc).__name__, exc)
        finally:
            self.elapsed_s = self._clock() - self._began
            self._done.set()

    def _ready(self, name: str) -> None:
        if self._on_ready is None:
            return
        try:
            self._on_ready(name)
        except Exception as exc:  # a wake-up that fails only leaves jobs to their back-off
            logger.warning("after %s came up: %s: %s", name, type(exc).__name__, exc)

    def wait(self, timeout_s: float) -> None:
        """Return once every application runs.

        Raises:
            TimeoutError: Not all of them ran within ``timeout_s``.
            Exception: What deploying raised (a replica that cannot start, Serve down).
        """
        if not self._done.wait(timeout_s):
            waiting = [n for n in self._apps if n not in self._running]
            raise TimeoutError(f"model applications not running after {timeout_s} s: {', '.join(waiting)}")
        if self._error is not None:
            raise self._error

    def health(self, statuses: Mapping[str, str], pid: int) -> ActorHealth:
        """The applications' health as one row of ``pacsai status``: each application is a
        loop, which has run a round once it runs, and fails when Serve reports it failed or it
        is not deployed when deploying is over (it failed before it, or an operator removed
        it); one that is neither is deploying.

        Args:
            statuses: Serve's status of each deployed application (``serve.status()``).
            pid: This process.
        """
        loops = []
        for name in self._apps:
            status = _plain(statuses.get(name, "")) or ("NOT_DEPLOYED" if self.done else "WAITING")
            problem = status.lower() if status in _FAILED else ""
            if status == "NOT_DEPLOYED":  # deploying stopped before it, or an operator removed it
                problem = f"not deployed ({self.error})"[:300] if self._error is not None else "not deployed"
            loops.append(LoopHealth(name, True, rounds=int(status == "RUNNING"), last_error=problem))
        running = sum(1 for lp in loops if lp.rounds)
        failed = sum(1 for lp in loops if lp.last_error)
        return ActorHealth(MODELS, pid, running, failed, len(loops) - running - failed, self.error[:300], tuple(loops))

    @staticmethod
    def deploying(health: ActorHealth) -> list[str]:
        """The applications of a ``health`` row that are neither running nor failed."""
        return [lp.name for lp in health.loops if not lp.rounds and not lp.last_error]


def _family_apps(family: str, names: Iterable[str]) -> list[str]:
    """The applications among ``names`` of one family: its own and every other version's."""
    own, versions = app_name(family), app_name(family, "")
    return sorted(n for n in names if n == own or n.startswith(versions))


def remove_models(families: list[str]) -> list[str]:
    """Delete every Serve application of ``families`` (every version deployed, configured or
    not); every other family keeps serving.

    Jobs routed to a removed family wait in the ledger (``linked``, reason
    ``model:<family> unavailable``) without spending retries, as in any AI outage, until the
    family is deployed again.

    Returns:
        The deleted application names.
    """
    from ray import serve  # not at import: `pacsai status` renders the models row without Serve

    deployed = deployed_models()
    names = [n for family in families for n in _family_apps(family, deployed)]
    for name in names:
        serve.delete(name)
        logger.info("removed Serve application %s", name)
    return names


def deployed_models() -> dict[str, str]:
    """Return ``{application name: status}`` of the Serve applications of model families (every
    version: ``model-<family>`` and ``model-<family>--<version>``)."""
    from ray import serve

    applications = serve.status().applications
    return {name: str(app.status) for name, app in applications.items() if name.startswith(app_name(""))}
