"""Model operations: list, deploy and remove families on the running Ray; show a family's card;
promote and roll back its versions (issue 17). Half of the service layer ``api.operations``.

Changes take the actor the audit trail names; promote and rollback write the live version, the
halts and their audit event in one transaction (``state.ledger.models``).
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable
from typing import Protocol

from api.refusals import CONTROL_CHARS, Conflict, InvalidArgument, NotFound, check_family, check_reason
from core.config import AppConfig, ModelEntry
from core.errors import DependencyUnavailable
from core.rollout import ModelCardReport, RolloutState, build_card, live_version, rollback_halts, version_app
from state.ledger import Ledger

__all__ = ["ModelControl", "ModelOperations", "RayModelControl"]

logger = logging.getLogger(__name__)

_VERSION_MAX = 64
_NOT_SERVING = ("DEPLOY_FAILED", "DELETING")  # Serve application states that answer no request


class ModelControl(Protocol):
    """The model families' Serve applications on the running Ray."""

    def list(self) -> dict[str, str]:
        """``{application name: status}`` of the deployed families (every version of each)."""
        ...

    def deploy(self, family: str) -> builtins.list[str]:
        """Deploy (or update) every version of one family; return the application names deployed."""
        ...

    def remove(self, family: str) -> builtins.list[str]:
        """Remove every version of one family; return the application names removed (empty:
        none was deployed)."""
        ...


class RayModelControl:
    """``ModelControl`` on the installation's Ray, through ``actors.pipeline``.

    ``actors.pipeline`` (and Ray with it) is imported only when a model operation runs, so the
    other operations never load Ray.
    """

    def __init__(self, cfg: AppConfig) -> None:
        self._cfg = cfg

    def _connect(self) -> None:
        from actors.pipeline import connect_ray

        connect_ray(self._cfg)

    def list(self) -> dict[str, str]:
        """``{application name: status}`` of the deployed families.

        Raises:
            DependencyUnavailable: No Ray is running.
        """
        from actors.pipeline import deployed_models

        self._connect()
        return deployed_models()

    def deploy(self, family: str) -> builtins.list[str]:
        """Deploy (or update) one family's application; the others keep serving.

        Raises:
            DependencyUnavailable: No Ray is running.
            ModelWeightsError: Its weights file is missing or does not match its sha256.
        """
        from actors.pipeline import deploy_models

        self._connect()
        return deploy_models(self._cfg, [family])

    def remove(self, family: str) -> builtins.list[str]:
        """Remove the applications of every version of one family that are deployed.

        Raises:
            DependencyUnavailable: No Ray is running.
        """
        from actors.pipeline import remove_models

        self._connect()
        return remove_models([family])


class ModelOperations:
    """The model operations of ``api.operations.Operations`` (its base class)."""

    _cfg: AppConfig
    _ledger: Ledger
    _models: ModelControl | None
    _now: Callable[[], float] = time.time

    # ------------------------------------------------------------------ models
    def models_list(self) -> dict[str, str]:
        """``{application name: status}`` of the deployed model families.

        Raises:
            DependencyUnavailable: No Ray is reachable from here.
        """
        return self._control().list()

    def models_deploy(self, family: str, actor: str) -> list[str]:
        """Deploy (or update) one configured family, every version of it; the others keep serving.

        Raises:
            NotFound: The family is not in the config's ``models`` (there is nothing to deploy).
            InvalidArgument: The family name is malformed.
            DependencyUnavailable: No Ray is reachable from here.
            ModelWeightsError: Its weights file is missing or does not match its sha256.
        """
        check_family(family)
        if family not in self._cfg.models:
            raise NotFound(f"family: got {family!r}; expected one of {sorted(self._cfg.models)}", family)
        deployed = self._control().deploy(family)
        logger.info("model family %s deployed by %s", family, actor)
        return deployed

    def models_remove(self, family: str, actor: str) -> list[str]:
        """Remove one family's applications (every version); its jobs wait (visibly) until it is
        deployed again.

        Raises:
            NotFound: No application of that family is deployed.
            InvalidArgument: The family name is malformed.
            DependencyUnavailable: No Ray is reachable from here.
        """
        check_family(family)
        removed = self._control().remove(family)
        if not removed:
            raise NotFound(f"family: got {family!r}; expected a deployed family (the model list names them)", family)
        logger.info("model family %s removed by %s", family, actor)
        return removed

    # ---------------------------------------------------------- model versions
    def models_show(self, family: str) -> ModelCardReport:
        """The family's model card: per version what its publisher declares, its traffic, whether
        it is live, halted or deployed, and what this site observed (studies, positive rates,
        shadow agreement; agreement with readers is not available yet).

        Raises:
            NotFound: The family is not configured.
            InvalidArgument: The family name is malformed.
        """
        entry = self._entry(family)
        versions = self._ledger.models
        observed = {v: versions.observed(family, v) for v in entry.all_versions()}
        try:
            deployed = None if self._models is None else set(self._models.list())
        except DependencyUnavailable:  # the card is still worth showing without Ray
            deployed = None
        return build_card(family, entry, versions.rollout(family), observed, deployed)

    def models_promote(self, family: str, version: str, actor: str, reason: str = "") -> RolloutState:
        """Make a configured version live; the version live until now gets no studies until it is
        made live again (audited with the change).

        Raises:
            NotFound: The family or the version is not configured.
            Conflict: The version is live already, or its application is not deployed.
            InvalidArgument: A malformed family or version, or a bad reason.
            DependencyUnavailable: No Ray is reachable from here (to check the deployment).
        """
        entry, text = self._entry(family), check_reason(reason, "promote", required=False)
        self._version(family, entry, version)
        live = live_version(entry, self._ledger.models.rollout(family))
        if version == live:
            raise Conflict(f"version: {family} {version} is live already; expected another configured version", version)
        self._serving(family, entry, version)
        state = self._ledger.models.promote(family, version, live, actor, text, self._now())
        logger.info("model %s %s promoted over %s by %s", family, version, live, actor)
        return state

    def models_rollback(self, family: str, version: str, actor: str, reason: str = "") -> RolloutState:
        """Go back to a configured version: it becomes live and the versions rolled back from are
        halted (their canary, rule or shadow traffic stops). Rolling back to the live version
        halts the canary and rule candidates beside it. Audited with the change.

        Raises:
            NotFound: The family or the version is not configured.
            Conflict: Nothing to roll back from, or the version's application is not deployed.
            InvalidArgument: A malformed family or version, or a bad reason.
            DependencyUnavailable: No Ray is reachable from here (to check the deployment).
        """
        entry, text = self._entry(family), check_reason(reason, "roll back", required=False)
        self._version(family, entry, version)
        state = self._ledger.models.rollout(family)
        halts = rollback_halts(entry, state, version)
        if not halts:
            raise Conflict(
                f"version: {family} {version} is live and no canary or rule version beside it gets studies; "
                "expected something to roll back from",
                version,
            )
        if version != live_version(entry, state):  # the live one serves already (or waits its outage out)
            self._serving(family, entry, version)
        state = self._ledger.models.rollback(family, version, halts, actor, text, self._now())
        logger.info("model %s rolled back to %s from %s by %s", family, version, ", ".join(halts), actor)
        return state

    def _entry(self, family: str) -> ModelEntry:
        check_family(family)
        entry = self._cfg.models.get(family)
        if entry is None:
            raise NotFound(f"family: got {family!r}; expected one of {sorted(self._cfg.models)}", family)
        return entry

    def _version(self, family: str, entry: ModelEntry, version: str) -> None:
        if not version or len(version) > _VERSION_MAX or CONTROL_CHARS.search(version):
            raise InvalidArgument(
                f"version: got {version[:70]!r}; expected 1-{_VERSION_MAX} characters, no control characters", "version"
            )
        if version not in entry.all_versions():
            raise NotFound(
                f"version: got {version!r}; expected one of {sorted(entry.all_versions())} (the configured "
                f"versions of {family})",
                version,
            )

    def _serving(self, family: str, entry: ModelEntry, version: str) -> None:
        app = version_app(family, entry, version)
        status = self._control().list().get(app)
        if status is None or status.rsplit(".", 1)[-1] in _NOT_SERVING:
            raise Conflict(
                f"version: {family} {version}: application {app} is {status or 'not deployed'}; expected it "
                f"deployed (pacsai models deploy {family})",
                version,
            )

    def _control(self) -> ModelControl:
        if self._models is None:
            raise DependencyUnavailable("ray", "model operations are not available in this process")
        return self._models
