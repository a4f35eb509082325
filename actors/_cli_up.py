"""``pacsai up``: the pipeline in the foreground, accepting C-STORE within seconds, until SIGTERM.

Ray starts in the main thread while, in another, the pipeline's modules import and its run
opens (``Pipeline.prepare``). The listener's line is printed as soon as it accepts, the
stages' when they are up (the model applications are built first: torch, Serve, every
weights file checked), and the model applications' when they run: they deploy in the
background (``actors.deployer``). Kept apart from ``actors.cli``,
which dispatches to ``cmd_up``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core.config import AppConfig

__all__ = ["cmd_up"]


def cmd_up(args: argparse.Namespace) -> int:
    """Run the service in the foreground until SIGTERM / SIGINT.

    The listener comes up first and C-STORE is accepted from then on; the model applications
    deploy in the background (their readiness is printed, and ``pacsai status`` shows the row
    ``models``), and studies that arrive meanwhile wait for them in the ledger.
    """
    from actors.cli import _config, _console, _ledger
    from actors.supervisor import Supervisor

    cfg = _config(args)
    stop = threading.Event()
    t0 = time.monotonic()
    listen = f"listener {cfg.listener.ae_title} on {cfg.listener.host}"
    with _console().status("pacsai up: starting Ray, the listener and the stages ...", spinner="dots"):
        pipeline = _start_pipeline(
            cfg,
            stop,
            deploy=not args.no_deploy,
            on_listening=lambda p: _say(
                f"{listen}:{p.listener_port()} (accepting after {time.monotonic() - t0:.1f} s)"
            ),
        )
    _say(f"every stage up, var {pipeline.layout.root} (up in {time.monotonic() - t0:.1f} s)")
    if cfg.hl7 is not None:
        _say(f"HL7 MLLP on {cfg.hl7.listener.host}:{pipeline.hl7_port()}")
    models = pipeline.models
    if models is not None:
        _say(f"models deploying: {', '.join(models.names)} (studies wait for them)")
    supervision = Supervisor(pipeline, _ledger(cfg)).start()
    try:
        while not stop.is_set():
            stop.wait(1.0)
            if models is not None and models.done:
                _models_done(models, time.monotonic() - t0)
                models = None
    finally:
        supervision.stop()
        _say("stopping (work in flight stays in the ledger)")
        pipeline.stop()
        import ray

        ray.shutdown()
    return 0


def _say(line: str) -> None:
    print(f"pacsai up: {line}", flush=True)


def _start_pipeline(cfg: AppConfig, stop: threading.Event, *, deploy: bool, on_listening: Any) -> Any:
    """Start Ray while, in another thread, the early listener starts (``actors._cli_bootstrap``:
    C-STORE accepted within seconds, before any actor exists), the pipeline's modules import and
    its run opens; then the pipeline, without waiting for the models. The listener actors take
    the port over from the early listener as soon as they answer. From the moment Ray is up,
    SIGTERM / SIGINT set ``stop``: one that comes while the stages start (the listener already
    accepts) stops the pipeline cleanly once they are up.

    Raises:
        ConfigError: The listener's port is held by another process, or the alert policy file
            (``clinical.policy_file``) is not valid for the configured models (before Ray starts).
        ModelWeightsError: A weights file is missing or wrong (before Ray starts).
    """
    from actors._cli_bootstrap import EarlyListener, port_in_use
    from actors.config_file import hash_key
    from actors.ray_session import ensure_ray

    t0 = time.monotonic()
    port_in_use(cfg)  # raises before Ray starts, as do a bad alert policy and a missing or wrong weights file:
    if cfg.clinical.policy_file:
        from core.clinical import model_findings
        from state.policy_file import PolicyHolder

        PolicyHolder(cfg.clinical.policy_file, cfg.clinical.policy_reload_s, model_findings(cfg))
    if deploy:
        from serve.weights import check_weights

        check_weights(cfg)

    def prepare() -> tuple[Any, Any]:
        early = EarlyListener.start(cfg, hash_key(cfg))
        if early is not None:
            _say(
                f"listener {cfg.listener.ae_title} on {cfg.listener.host}:{cfg.listener.port} (accepting "
                f"after {time.monotonic() - t0:.1f} s, before Ray: the listener actors take over)"
            )
        pipeline = importlib.import_module("actors.pipeline").Pipeline(cfg, share_port=early is not None)
        return pipeline.prepare(), early

    with ThreadPoolExecutor(1, thread_name_prefix="prepare-pipeline") as pool:
        preparing = pool.submit(prepare)
        ensure_ray(cfg)  # in the main thread: Ray installs signal handlers
        # Ours replace Ray's SIGTERM handler, which would kill us mid-start or mid-shutdown.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        pipeline, early = preparing.result()

    def listening(p: Any) -> None:
        if early is None:
            on_listening(p)
            return
        cut = early.hand_over()
        _say(
            f"listener actors took the port over after {time.monotonic() - t0:.1f} s ({early.received} "
            f"instances came in before them; {cut} associations cut off)"
        )

    try:
        return pipeline.start(deploy=deploy, wait_models=False, on_listening=listening)
    except BaseException:
        if early is not None and early.listener.serving:
            early.hand_over(0.0)
        raise


def _models_done(models: Any, elapsed_s: float) -> None:
    """Say once that the model applications run, or why they do not (the listener goes on)."""
    if models.error:
        print(
            f"pacsai up: model applications NOT all deployed: {models.error}; studies wait in the ledger "
            "(`pacsai status`, `pacsai models deploy FAMILY`)",
            file=sys.stderr,
            flush=True,
        )
    else:
        _say(f"models ready in {elapsed_s:.1f} s ({len(models.names)} applications)")
