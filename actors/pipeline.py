"""Composition root: load the config once, start Ray, create the actors, deploy models.

``Pipeline`` is what ``pacsai up`` runs and what the integration tests start. It is the only
module that knows every actor and the Serve application builder. Each start is a run of its
own (``core.leases``): the leases an earlier, crashed run left are taken back at once. The
listeners and the stages start before the model applications, which deploy in the background
(``actors.deployer``), so C-STORE is accepted within seconds of ``pacsai up``.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.exceptions import ActorUnavailableError

from actors.adapters.cells import CellSpools
from actors.adapters.metrics import ENV as METRICS_ENV
from actors.adapters.tracing import tracing_env
from actors.assembler import AssemblerActor
from actors.auditor import AuditorActor
from actors.config_file import hash_key, load_config, warn_exposure
from actors.delivery import DeliveryActor
from actors.deployer import ModelDeployer, deployed_models, remove_models
from actors.ehr_delivery import EhrDeliveryActor
from actors.hl7_listener import Hl7ListenerActor
from actors.inference import InferenceActor
from actors.listener import ListenerActor
from actors.prior_linker import PriorLinkerActor
from actors.ray_session import connect_ray, ensure_ray, ray_security_env, worker_env
from actors.router import RouterActor
from actors.sr_writer import SRWriterActor
from actors.stage import StageRuntime
from actors.validator import ValidatorActor
from core.clinical import model_findings
from core.config import AppConfig, StageConfig, StorageConfig, cell_storage
from core.health import ActorHealth
from core.leases import stale_owners
from core.placement import actor_name, cell_resource, cell_resources
from core.rollout import version_app
from core.types import JobState
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


@dataclass
class Pipeline:
    """The running pipeline: actor handles and how to stop them."""

    cfg: AppConfig
    layout: VarLayout = field(init=False)
    actors: dict[str, Any] = field(default_factory=dict)
    run_id: str = field(init=False, default="")
    """This run (``core.leases``): in every lease its stage actors hold; set by ``start``."""
    models: ModelDeployer | None = field(init=False, default=None)
    """The background deployment of the model applications (``None``: this start deploys none)."""
    share_port: bool = False
    """Listeners bind with ``SO_REUSEPORT`` even alone: ``pacsai up``'s early listener holds
    the port until they answer (``actors._cli_bootstrap``)."""
    _prepared: bool = field(init=False, default=False, repr=False)

    def __post_init__(self) -> None:
        self.layout = VarLayout.at(self.cfg.storage.var_dir)

    def cells(self) -> list[str]:
        """The ingress cells: the configured ones on a cluster, else the one cell ``''``."""
        return list(self.cfg.cluster.cells) if self.cfg.cluster is not None else [""]

    def storage_of(self, cell: str) -> StorageConfig:
        """Where one cell's files live and which jobs it leases (one machine: the config's)."""
        return cell_storage(self.cfg, cell)

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
            run_id=self.run_id,
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
        env = worker_env(self._secret_env() | self.observability_env())
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

    def prepare(self) -> Pipeline:
        """Do, once, what needs no Ray and must precede every actor: open the run
        (``open_run``: migrations, then a dead run's leases taken back). ``start`` does it in a
        thread while Ray starts, unless it was done (``pacsai up`` does it while its own
        modules import). The model applications are built later (``start``), once the
        listeners answer: torch and Serve cost seconds of the two cores the listener needs.
        """
        if not self._prepared:
            self.open_run()
            self._prepared = True
        return self

    def start(
        self, *, deploy: bool = True, wait_models: bool = True, on_listening: Callable[[Pipeline], None] | None = None
    ) -> Pipeline:
        """Start everything; return when every actor answered its first health check (and,
        with ``wait_models``, every model application runs).

        The order keeps a cold start short: Ray, while the run opens (migrations, then the
        leases a crashed run left taken back); the listeners (they accept C-STORE as soon as
        they answer); the model applications built (torch, Serve, every weights file checked:
        seconds of CPU the listener's start no longer shares); the other actors; and last the
        model applications, deployed in the background (``actors.deployer``): studies that
        arrive first wait for their model in the ledger without spending retries. On a cluster
        each ingress cell gets its listeners and stage actors, placed on its node by the cell's
        Ray resource; the wait covers the cells whose nodes are up (a cell whose node joins
        later starts then: Ray places its actors when the resource appears).

        Args:
            deploy: Deploy the model applications too (tests may share one deployment).
            wait_models: Return only once they run; otherwise ``wait_models`` waits later.
            on_listening: Called once the listeners answer (``pacsai up`` says so at once).

        Raises:
            ModelWeightsError: A weights file is missing or wrong (the listeners, started
                first, are stopped again; a study they took meanwhile waits in the ledger).
            Exception: With ``wait_models``, what deploying the model applications raised
                (the pipeline is stopped again).
        """
        warn_exposure(self.cfg)
        key = hash_key(self.cfg)
        with ThreadPoolExecutor(1, thread_name_prefix="prepare-pipeline") as pool:
            preparing = pool.submit(self.prepare)  # seconds: spent while Ray starts
            ensure_ray(self.cfg)
            preparing.result()
        self.actors = {}
        for cell in self.cells():
            self.actors.update(self._cell_listeners(cell, key))
        self._await_health(list(self.actors))  # C-STORE is accepted from here on
        if on_listening is not None:
            on_listening(self)
        self._start_stages(key, deploy)
        self._await_health(list(self.actors))
        if wait_models:
            try:
                self.wait_models()
            except BaseException:
                self.stop()
                raise
        return self

    def _start_stages(self, key: bytes, deploy: bool) -> None:
        """Build the model applications (torch and Serve imported, every weights file checked),
        now that the listeners accept; then start the auditor, the stage and bridge actors and
        the API, and the models' background deployment.

        Raises:
            ModelWeightsError: A weights file is missing or wrong (the listeners are stopped again).
            ConfigError: A bundle or exported network does not fit its entry (likewise).
        """
        families = self._deploy_order() if deploy and self.cfg.models else []
        try:
            apps = build_model_apps(self.cfg, families) if families else {}
        except BaseException:
            self.stop()
            raise
        self.actors["auditor"] = AuditorActor.options(**self._options("auditor", 0)).remote(
            self.cfg.storage,
            30.0,
            self.cfg.logging.level,
            self.cfg.metrics.ledger_period_s if self.cfg.metrics.enabled else None,
            clinical=self.cfg.clinical,
        )
        for cell in self.cells():
            self.actors.update(self._cell_actors(cell, key))
        if self.cfg.api is not None:
            self._deploy_api(key)  # starts Serve (with its proxy) before the deployer would
        if apps:
            self.models = self._deployer(apps).start()

    def _await_health(self, keys: list[str]) -> None:
        """Wait for the first health answer of these actors (of the cells whose node is up)."""
        live = [k for k in keys if _cell_of(k) in self._live_cells()]
        timeout = self.cfg.cluster.start_timeout_s if self.cfg.cluster is not None else 120.0
        ray.get([self.actors[k].health.remote() for k in live], timeout=timeout)

    def open_run(self) -> None:
        """Open this run (``prepare`` does): apply pending migrations of every
        store once, before any actor opens one, and take back every lease another run holds.
        Two pipelines never share a ledger but as the cells of one run, so another run's leases
        are a crashed run's, and without this its jobs would wait for the leases to expire
        (``stages.lease_s``). Needs no Ray."""
        self.run_id = uuid.uuid4().hex[:12]
        ledger = open_ledger(self.cfg.storage, self.layout)
        try:
            now = time.time()
            owners = stale_owners(ledger.jobs.lease_owners(now), self.run_id)
            taken = ledger.jobs.take_back(owners, f"run:{self.run_id}", now)
        finally:
            ledger.close()
        if taken:
            logger.warning(
                "run %s: took back %d lease(s) of an earlier run (%s)", self.run_id, taken, ", ".join(owners)
            )
        if self.cfg.hl7 is not None:
            open_database(self.cfg.storage.ledger, self.layout, "context").close()
        if self.cfg.ehr is not None:
            open_database(self.cfg.storage.ledger, self.layout, "ehr").close()

    def _deploy_order(self) -> list[str]:
        """The model families, those the routing rules name first (in their order), then the
        rest: on a small machine the first ones run well before the last."""
        named = [r.family for r in self.cfg.routing.rules if r.family in self.cfg.models]
        return list(dict.fromkeys([*named, *sorted(self.cfg.models)]))

    def _deployer(self, apps: dict[str, Any]) -> ModelDeployer:
        """The background deployment of the model applications; each one that comes up makes
        the jobs waiting for a model due at once, not at their next back-off."""
        return ModelDeployer(
            apps,
            lambda name, app: serve.run(app, name=name, route_prefix=None),
            prepare=lambda: start_serve(self.cfg),
            on_ready=lambda _name: self._wake_waiting(JobState.LINKED),
        )

    def _wake_waiting(self, state: JobState) -> None:
        ledger = open_ledger(self.cfg.storage, self.layout)
        try:
            ledger.jobs.wake_waiting(state, time.time())
        finally:
            ledger.close()

    def wait_models(self, timeout_s: float = 600.0) -> None:
        """Return once every model application this pipeline deploys runs (at once when it
        deploys none).

        Raises:
            TimeoutError: They did not all run within ``timeout_s``.
            Exception: What deploying them raised.
        """
        if self.models is not None:
            self.models.wait(timeout_s)

    def models_health(self) -> ActorHealth | None:
        """The model applications this pipeline deploys, as a health row (``None``: none)."""
        if self.models is None:
            return None
        return self.models.health(deployed_models(), os.getpid())

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

    def _cell_listeners(self, cell: str, key: bytes) -> dict[str, Any]:
        """One cell's DICOM listeners (``listener.instances`` sharing the port)."""
        return {
            _key(cell, "listener", index): ListenerActor.options(
                **self._options("listener", 0, cell, index), max_concurrency=4
            ).remote(
                self.cfg.listener,
                self.storage_of(cell),
                self.cfg.assembly.quiet_period_s,
                key,
                self.cfg.logging.level,
                self.cfg.assembly,
                self.share_port,
                purges=index == 0,  # the cell's retention runs where its files are, once
            )
            for index in range(self.cfg.listener.instances)
        }

    def _cell_actors(self, cell: str, key: bytes) -> dict[str, Any]:
        """One cell's stage actors (``stage_actors`` of each CPU stage) and bridge actors."""
        st = self.cfg.stages
        storage = self.storage_of(cell)
        layout = VarLayout.at(storage.var_dir)
        spools = CellSpools(self.cfg.site_name, self.cfg.ray.namespace, layout.spool) if cell else None
        per_stage = self.cfg.cluster.stage_actors if self.cfg.cluster is not None else 1
        out: dict[str, Any] = {}
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
                lambda: (self.runtime(st.sr_writer, cell), layout, self.cfg.sr, self.cfg.priors, self.cfg.clinical),
            ),
            "delivery": (
                DeliveryActor,
                st.delivery.num_cpus,
                lambda: (
                    self.runtime(st.delivery, cell),
                    self.cfg.pacs,
                    layout,
                    self.cfg.sr,
                    self.cfg.priors,
                    self.cfg.clinical,
                    model_findings(self.cfg),
                ),
            ),
        }
        for role, (actor, cpus, args) in stages.items():
            for index in range(per_stage):
                out[_key(cell, role, index)] = actor.options(**self._options(role, cpus, cell, index)).remote(*args())
        out.update(self._bridge_actors(cell, storage, key))
        return out

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
        if self.models is not None:
            self.models.cancel()
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
