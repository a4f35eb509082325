"""Composition root: load the config once, start Ray, deploy models, create the actors.

``Pipeline`` is what ``pacsai up`` runs and what the integration tests start. It is the only
module that knows every actor and the Serve application builder.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import serve
from ray.exceptions import ActorUnavailableError

from actors.adapters.cells import CellSpools
from actors.adapters.metrics import ENV as METRICS_ENV
from actors.adapters.tracing import tracing_env
from actors.assembler import AssemblerActor
from actors.auditor import AuditorActor
from actors.delivery import DeliveryActor
from actors.ehr_delivery import EhrDeliveryActor
from actors.hl7_listener import Hl7ListenerActor
from actors.inference import InferenceActor
from actors.listener import ListenerActor
from actors.prior_linker import PriorLinkerActor
from actors.router import RouterActor
from actors.sr_writer import SRWriterActor
from actors.stage import StageRuntime
from actors.validator import ValidatorActor
from core.bundles import expand_models
from core.config import AppConfig, StageConfig, StorageConfig, app_name, parse_config
from core.errors import ConfigError, DependencyUnavailable
from core.health import ActorHealth
from core.identifiers import DEFAULT_KEY
from core.placement import actor_name, cell_resource, cell_resources
from core.rollout import version_app
from state.layout import VarLayout
from state.ledger import open_database, open_ledger

__all__ = [
    "Pipeline",
    "build_model_apps",
    "connect_ray",
    "deploy_models",
    "deployed_models",
    "ensure_ray",
    "hash_key",
    "load_config",
    "ray_security_env",
    "remove_models",
    "start_serve",
    "wait_until",
]

logger = logging.getLogger(__name__)


def load_config(path: str | Path) -> AppConfig:
    """Read and validate a YAML config file.

    Raises:
        ConfigError: The file cannot be read, is not YAML, or has invalid fields (all listed).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(str(p), [f"<file>: cannot read ({exc.strerror})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(p), [f"<file>: not valid YAML ({exc})"]) from None
    if isinstance(raw, dict):  # bundle and spec entries: what their files declare (issue 17)
        raw = expand_models(raw, lambda f: Path(f).read_text(encoding="utf-8"), lambda f: Path(f).is_file(), str(p))
    return parse_config(raw, str(p))


def hash_key(cfg: AppConfig) -> bytes:
    """Return the key for hashed identifiers (from the configured env var, else the default).

    Raises:
        ConfigError: ``hash_key_env`` names a variable that is not set.
    """
    if cfg.hash_key_env is None:
        return DEFAULT_KEY
    value = os.environ.get(cfg.hash_key_env)
    if not value:
        raise ConfigError("environment", [f"{cfg.hash_key_env}: not set; expected the identifier hash key"])
    return value.encode()


def ray_security_env(cfg: AppConfig) -> dict[str, str]:
    """The environment that turns on Ray's token authentication and TLS for this process, from
    ``ray.auth_token_file`` and ``ray.tls`` (Ray reads them from the environment only).

    >>> from core.config import parse_config
    >>> ray_security_env(parse_config({"ray": {"auth_token_file": "/etc/pacsai/ray.token"}}))
    {'RAY_AUTH_MODE': 'token', 'RAY_AUTH_TOKEN_PATH': '/etc/pacsai/ray.token'}
    """
    env: dict[str, str] = {}
    if cfg.ray.auth_token_file:
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": cfg.ray.auth_token_file}
    if cfg.ray.tls is not None:
        env |= {
            "RAY_USE_TLS": "1",
            "RAY_TLS_SERVER_CERT": cfg.ray.tls.certificate,
            "RAY_TLS_SERVER_KEY": cfg.ray.tls.private_key,
            "RAY_TLS_CA_CERT": cfg.ray.tls.ca_certificates,
        }
    return env


def _secure(cfg: AppConfig) -> None:
    """Apply ``ray_security_env`` to this process before it talks to Ray.

    Ray reads its settings into a cached config when it is imported, so they are refreshed here,
    as Ray's own ``_enable_token_auth`` does, and the token cache is reset.
    """
    env = ray_security_env(cfg)
    if not env:
        return
    os.environ.update(env)
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def ensure_ray(cfg: AppConfig) -> None:
    """Connect to (or start) Ray as configured, unless this process already did."""
    if ray.is_initialized():
        return
    _secure(cfg)
    local = cfg.ray.address is None
    ray.init(
        address=cfg.ray.address,
        num_cpus=cfg.ray.num_cpus if local else None,
        namespace=cfg.ray.namespace,
        include_dashboard=False,
        logging_level=logging.WARNING,
        # Ray's Prometheus endpoint (one per node) and how often workers report to it: only a
        # Ray this process starts takes them; a cluster's come from its `ray start`.
        **(
            {
                "_metrics_export_port": cfg.metrics.export_port,
                "_system_config": {"metrics_report_interval_ms": cfg.metrics.report_interval_ms},
            }
            if local
            else {}
        ),
    )


def build_model_apps(cfg: AppConfig, families: list[str] | None = None) -> dict[str, Any]:
    """Build (not deploy) one Serve application per version of each model family, by
    application name (``model-<family>`` for the family entry's own version,
    ``model-<family>--<version>`` for each of its ``versions``); needs no running Ray.

    Raises:
        ModelWeightsError: A weights file is missing or does not match its sha256 (the file
            is named), so startup stops before anything starts.
    """
    from serve.app import build_app  # the composition root is the one place that knows serve

    chosen = sorted(cfg.models) if families is None else families
    return {
        version_app(family, cfg.models[family], version): build_app(family, entry)
        for family in chosen
        for version, entry in cfg.models[family].all_versions().items()
    }


def deploy_models(cfg: AppConfig, families: list[str] | None = None, apps: dict[str, Any] | None = None) -> list[str]:
    """Deploy (or update) one Serve application per version of each model family.

    Args:
        cfg: The config (its ``models``).
        families: Only these families (every version of each); ``None``: all.
        apps: Applications already built by ``build_model_apps``, by application name.

    Returns:
        The deployed application names.

    Raises:
        ModelWeightsError: A weights file is missing or does not match its sha256.
    """
    apps = apps if apps is not None else build_model_apps(cfg, families)
    start_serve(cfg)
    for name, app in apps.items():
        serve.run(app, name=name, route_prefix=None)
    return list(apps)


def start_serve(cfg: AppConfig) -> None:
    """Start Ray Serve once: with its HTTPS proxy when the API is configured (``api``: bind
    address, port, TLS; on every node of a cluster), else with no HTTP proxy at all.

    Serve takes its HTTP options when it first starts; on a Ray where Serve already runs they
    are kept as they are (Serve warns when they differ).
    """
    if cfg.api is None:
        serve.start(proxy_location="Disabled")
        return
    from api.deployment import http_options  # the composition root is the one place that knows api

    serve.start(proxy_location="EveryNode" if cfg.cluster is not None else "HeadOnly", http_options=http_options(cfg))


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
    deployed = deployed_models()
    names = [n for family in families for n in _family_apps(family, deployed)]
    for name in names:
        serve.delete(name)
        logger.info("removed Serve application %s", name)
    return names


def deployed_models() -> dict[str, str]:
    """Return ``{application name: status}`` of the Serve applications of model families (every
    version: ``model-<family>`` and ``model-<family>--<version>``)."""
    applications = serve.status().applications
    return {name: str(app.status) for name, app in applications.items() if name.startswith(app_name(""))}


def connect_ray(cfg: AppConfig) -> None:
    """Join the running Ray of an installation (config address, else RAY_ADDRESS, else auto).

    Raises:
        DependencyUnavailable: No Ray is running there (``pacsai up`` starts one).
    """
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or "auto"
    _secure(cfg)
    try:
        ray.init(address=address, namespace=cfg.ray.namespace, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as exc:
        raise DependencyUnavailable("ray", f"no running Ray at {address!r} ({exc}); start `pacsai up` first") from exc


@dataclass
class Pipeline:
    """The running pipeline: actor handles and how to stop them."""

    cfg: AppConfig
    layout: VarLayout = field(init=False)
    actors: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layout = VarLayout.at(self.cfg.storage.var_dir)

    def cells(self) -> list[str]:
        """The ingress cells: the configured ones on a cluster, else the one cell ``''``."""
        return list(self.cfg.cluster.cells) if self.cfg.cluster is not None else [""]

    def storage_of(self, cell: str) -> StorageConfig:
        """Where one cell's files live and which jobs it leases (one machine: the config's)."""
        if not cell:
            return self.cfg.storage
        var_dir = str(Path(self.cfg.storage.var_dir) / "cells" / cell)
        return self.cfg.storage.model_copy(update={"var_dir": var_dir, "cell": cell})

    def runtime(self, stage: StageConfig, cell: str = "") -> StageRuntime:
        """The runtime settings handed to one stage actor."""
        return StageRuntime(
            storage=self.storage_of(cell),
            stage=stage,
            lease_s=self.cfg.stages.lease_s,
            poll_interval_s=self.cfg.stages.poll_interval_s,
            retry=self.cfg.retry,
            log_level=self.cfg.logging.level,
            notify_wait_s=self.cfg.stages.notify_wait_s,
        )

    def _options(self, name: str, num_cpus: float, cell: str = "", index: int = 0) -> dict[str, Any]:
        options: dict[str, Any] = {
            "name": actor_name(self.cfg.site_name, cell, name, index),
            "namespace": self.cfg.ray.namespace,
            "max_restarts": self.cfg.ray.actor_max_restarts,
            "num_cpus": num_cpus,
            "lifetime": None,
        }
        if cell:
            options["resources"] = cell_resources(cell)
        env = self._secret_env() | self.observability_env()
        if env:
            options["runtime_env"] = {"env_vars": env}
        return options

    def observability_env(self) -> dict[str, str]:
        """What an actor's process gets in its environment besides secrets: the log settings,
        metrics switched off (``metrics.enabled: false``; on by default) and tracing switched on
        (``tracing``; off by default)."""
        # The log settings `pacsai up` exported (actors.adapters.logs): a local Ray's workers
        # inherit them, a cluster's workers on other machines get them here.
        env = {k: v for k, v in os.environ.items() if k.startswith("PACSAI_LOG_") or k == "RAY_SERVE_LOG_TO_STDERR"}
        if not self.cfg.metrics.enabled:
            env[METRICS_ENV] = "0"
        tracing = self.cfg.tracing
        if tracing is not None:
            file = str(Path(tracing.file).resolve()) if tracing.file else str(self.layout.traces_file.resolve())
            env |= tracing_env(tracing.exporter, file, tracing.otlp_endpoint)
        return env

    def _secret_env(self) -> dict[str, str]:
        """The secrets the actors read from their environment (the PostgreSQL DSN, the FHIR
        token), handed to each actor's process by name through Ray's runtime environment: a
        Ray worker does not inherit the environment of the process that started the pipeline,
        and on a cluster it runs on another machine. Values never reach a file or a log line."""
        names = [
            self.cfg.storage.ledger.dsn_env if self.cfg.storage.ledger.backend == "postgresql" else None,
            self.cfg.ehr.fhir.token_env if self.cfg.ehr else None,
            self.cfg.pacs.dicomweb.token_env if self.cfg.pacs and self.cfg.pacs.dicomweb else None,
        ]
        return {n: os.environ[n] for n in names if n and n in os.environ}

    def start(self, *, deploy: bool = True) -> Pipeline:
        """Start everything; return when every actor answered its first health check.

        On a cluster each ingress cell gets its listeners and stage actors, placed on its node
        by the cell's Ray resource; the wait covers the cells whose nodes are up (a cell whose
        node joins later starts then: Ray places its actors when the resource appears).

        Args:
            deploy: Deploy the model applications too (tests may share one deployment).
        """
        key = hash_key(self.cfg)
        apps = build_model_apps(self.cfg) if deploy and self.cfg.models else {}
        ensure_ray(self.cfg)
        self._migrate()
        if apps:
            deploy_models(self.cfg, apps=apps)
        self.actors = {
            "auditor": AuditorActor.options(**self._options("auditor", 0)).remote(
                self.cfg.storage,
                30.0,
                self.cfg.logging.level,
                self.cfg.metrics.ledger_period_s if self.cfg.metrics.enabled else None,
            )
        }
        for cell in self.cells():
            self.actors.update(self._cell_actors(cell, key))
        if self.cfg.api is not None:
            self._deploy_api(key)
        live = [k for k in self.actors if _cell_of(k) in self._live_cells()]
        timeout = self.cfg.cluster.start_timeout_s if self.cfg.cluster is not None else 120.0
        ray.get([self.actors[k].health.remote() for k in live], timeout=timeout)
        return self

    def _deploy_api(self, key: bytes) -> None:
        """Deploy the HTTPS API (REST and DICOMweb) as the Serve ingress at ``/``. Its STOW-RS
        intake writes into the first cell's spool (one machine: the one spool); on a cluster
        its replicas run on that cell's node."""
        from api.deployment import API_APP, build_api_app

        start_serve(self.cfg)
        storage = self.storage_of(self.cells()[0])
        serve.run(build_api_app(self.cfg, storage, key, self._secret_env()), name=API_APP, route_prefix="/")
        logger.info("API at %s", self.api_url())

    def api_url(self) -> str:
        """The API's base URL (``https://host:port``, or ``http://`` with allow_plaintext).

        Raises:
            KeyError: The API is not configured (config section ``api``).
        """
        api = self.cfg.api
        if api is None:
            raise KeyError("api")
        host = "127.0.0.1" if api.host in ("0.0.0.0", "::") else api.host
        return f"{'https' if api.tls is not None else 'http'}://{host}:{api.port}"

    def _live_cells(self) -> set[str]:
        """Cells whose node is in the cluster now (one machine: the one cell)."""
        if self.cfg.cluster is None:
            return {""}
        present = {r for node in ray.nodes() if node.get("Alive") for r in node.get("Resources", {})}
        return {""} | {c for c in self.cells() if cell_resource(c) in present}

    def _cell_actors(self, cell: str, key: bytes) -> dict[str, Any]:
        """One cell's listeners and stage actors (``stage_actors`` of each CPU stage)."""
        st = self.cfg.stages
        storage = self.storage_of(cell)
        layout = VarLayout.at(storage.var_dir)
        spools = CellSpools(self.cfg.site_name, self.cfg.ray.namespace, layout.spool) if cell else None
        per_stage = self.cfg.cluster.stage_actors if self.cfg.cluster is not None else 1
        out: dict[str, Any] = {
            _key(cell, "listener", index): ListenerActor.options(
                **self._options("listener", 0, cell, index), max_concurrency=4
            ).remote(
                self.cfg.listener,
                storage,
                self.cfg.assembly.quiet_period_s,
                key,
                self.cfg.logging.level,
                self.cfg.assembly,
            )
            for index in range(self.cfg.listener.instances)
        }
        stages: dict[str, tuple[Any, float, Any]] = {
            "assembler": (
                AssemblerActor,
                st.assembler.num_cpus,
                lambda: (self.runtime(st.assembler, cell), self.cfg.assembly, self.cfg.pacs, self.cfg.hl7 is not None),
            ),
            "validator": (
                ValidatorActor,
                st.validator.num_cpus,
                lambda: (
                    self.runtime(st.validator, cell),
                    self.cfg.validation,
                    spools,
                    self.cfg.routing,
                    sorted(self.cfg.models),
                ),
            ),
            "router": (
                RouterActor,
                st.router.num_cpus,
                lambda: (
                    self.runtime(st.router, cell),
                    self.cfg.routing,
                    sorted(self.cfg.models),
                    self.cfg.hl7 is not None,
                    self.cfg.hl7.join_window_days if self.cfg.hl7 else 1,
                ),
            ),
            "prior_linker": (
                PriorLinkerActor,
                st.prior_linker.num_cpus,
                lambda: (
                    self.runtime(st.prior_linker, cell),
                    self.cfg.priors,
                    self.cfg.pacs,
                    self.cfg.listener,
                    layout,
                    dict(self.cfg.models),
                    key,
                ),
            ),
            "inference": (
                InferenceActor,
                st.inference.num_cpus,
                lambda: (self.runtime(st.inference, cell), dict(self.cfg.models), self.cfg.routing, self.cfg.priors),
            ),
            "sr_writer": (
                SRWriterActor,
                st.sr_writer.num_cpus,
                lambda: (self.runtime(st.sr_writer, cell), layout, self.cfg.sr, self.cfg.priors),
            ),
            "delivery": (
                DeliveryActor,
                st.delivery.num_cpus,
                lambda: (self.runtime(st.delivery, cell), self.cfg.pacs, layout, self.cfg.sr, self.cfg.priors),
            ),
        }
        for role, (actor, cpus, args) in stages.items():
            for index in range(per_stage):
                out[_key(cell, role, index)] = actor.options(**self._options(role, cpus, cell, index)).remote(*args())
        out.update(self._bridge_actors(cell, storage, key))
        return out

    def _migrate(self) -> None:
        """Apply pending schema migrations of every store once, before any actor opens one."""
        open_ledger(self.cfg.storage, self.layout).close()
        if self.cfg.hl7 is not None:
            open_database(self.cfg.storage.ledger, self.layout, "context").close()
        if self.cfg.ehr is not None:
            open_database(self.cfg.storage.ledger, self.layout, "ehr").close()

    def _bridge_actors(self, cell: str, storage: StorageConfig, key: bytes) -> dict[str, Any]:
        """The HL7 listener and the EHR delivery, each only when its config section is set."""
        out: dict[str, Any] = {}
        level = self.cfg.logging.level
        if self.cfg.hl7 is not None:
            out[_key(cell, "hl7_listener")] = Hl7ListenerActor.options(**self._options("hl7", 0, cell)).remote(
                self.cfg.hl7, storage, key, level
            )
        if self.cfg.ehr is not None:
            out[_key(cell, "ehr_delivery")] = EhrDeliveryActor.options(**self._options("ehr", 0, cell)).remote(
                self.cfg.ehr,
                storage,
                self.cfg.retry,
                self.cfg.sr.manufacturer,
                self.cfg.hl7 is not None,
                level,
            )
        return out

    def listener_port(self, timeout_s: float = 60.0, cell: str = "") -> int:
        """The listener's bound port (of one cell, on a cluster); waits while Ray restarts a
        crashed listener.

        Raises:
            TimeoutError: The listener did not answer within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return int(ray.get(self.actors[_key(cell, "listener")].port.remote(), timeout=timeout_s))
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"listener did not come back within {timeout_s} s") from None
                time.sleep(0.5)

    def hl7_port(self, cell: str = "") -> int:
        """The HL7 MLLP listener's bound port (of one cell, on a cluster).

        Raises:
            KeyError: The HL7 bridge is not configured (config section ``hl7``).
        """
        return int(ray.get(self.actors[_key(cell, "hl7_listener")].port.remote(), timeout=30))

    def health(self, timeout_s: float = 5.0) -> dict[str, ActorHealth]:
        """Ask every actor for its health; an actor that does not answer is reported down."""
        refs = {name: actor.health.remote() for name, actor in self.actors.items()}
        out: dict[str, ActorHealth] = {}
        for name, ref in refs.items():
            try:
                out[name] = ray.get(ref, timeout=timeout_s)
            except Exception as exc:  # a dead or hung actor is a health finding, not a crash
                out[name] = ActorHealth.unreachable(name, f"{type(exc).__name__}: {exc}"[:300])
        return out

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop taking work, give back leases, and end the actors. In-flight work stays in
        the ledger and resumes on the next start."""
        refs = []
        for name, actor in self.actors.items():
            try:
                refs.append(actor.stop.remote())
            except Exception:  # already gone: nothing to stop
                logger.warning("actor %s could not be asked to stop", name)
        try:
            ray.get(refs, timeout=timeout_s)
        except Exception as exc:  # stop is best effort; kill below ends them anyway
            logger.warning("not every actor stopped cleanly: %s", exc)
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.actors = {}
        if self.cfg.api is not None:
            from api.deployment import API_APP

            try:
                serve.delete(API_APP)
            except Exception as exc:  # best effort: Serve may already be gone
                logger.warning("API application not deleted: %s", exc)


def _key(cell: str, role: str, index: int = 0) -> str:
    """The key of an actor in ``Pipeline.actors``: ``listener`` on one machine, ``a/listener``
    and ``a/validator-1`` on a cluster."""
    name = f"{role}-{index}" if index else role
    return f"{cell}/{name}" if cell else name


def _cell_of(key: str) -> str:
    return key.split("/", 1)[0] if "/" in key else ""


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``predicate()`` until it is truthy or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
