"""Build the Ray Serve application of a model family from its registry entry.

Every resource request and limit comes from ``entry.serve`` (``core.config.ServeDeploymentConfig``):
CPUs and GPUs per replica, fixed replicas or an autoscaling range with its target of ongoing
requests, ``max_ongoing_requests`` / ``max_queued_requests`` (backpressure) and the health-check
period. Nothing is hard-coded here (on a 2-core machine the default of 1 CPU per replica starves
the other deployments; see the baselines). Every family is the same ``ModelDeployment`` over
its own predictor, so a new family needs no code here: only a predictor in
``models.families``, or none at all for a family from a MONAI bundle or an exported network
(an entry with ``kind`` set, issue 17). Such a network comes from outside, so ``build_app`` runs it
once on the CPU before anything is deployed (``models.families.deploy_problems``) and refuses
it with a ``ConfigError`` naming the field it contradicts: the input size, the finding count,
the output activation, the bundle's preprocessing.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application
from ray.serve.deployment import Deployment

from core.config import ModelEntry, ServeDeploymentConfig
from core.errors import ConfigError
from models.families import PREDICTORS, deploy_problems
from models.registry import resolve_weights
from serve.deployment import ModelDeployment

__all__ = ["FAMILIES", "build_app", "deployment_options"]

logger = logging.getLogger(__name__)

FAMILIES: dict[str, Deployment] = {family: ModelDeployment for family in sorted(PREDICTORS)}
"""Built-in model family key -> its Serve deployment (a class decorated with ``@serve.deployment``).
A family whose entry sets ``kind`` (a bundle or an exported network) is served by
``ModelDeployment`` too, under any key."""


def deployment_options(cfg: ServeDeploymentConfig) -> dict[str, Any]:
    """Translate a deployment's config into ``Deployment.options`` keyword arguments.

    Autoscaling applies when ``max_replicas > min_replicas``; otherwise ``min_replicas`` fixed
    replicas run (the schema keeps ``max_replicas >= 1``, so that is at least one).

    Args:
        cfg: The entry's ``serve`` options.

    Returns:
        Keyword arguments for ``Deployment.options``.
    """
    options: dict[str, Any] = {
        "ray_actor_options": {
            "num_cpus": cfg.num_cpus,
            "num_gpus": cfg.num_gpus,
            **({"resources": dict(cfg.resources)} if cfg.resources else {}),
        },
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "health_check_period_s": cfg.health_check_period_s,
    }
    if cfg.max_replicas > cfg.min_replicas:
        options["autoscaling_config"] = {
            "min_replicas": cfg.min_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
            "upscale_delay_s": cfg.upscale_delay_s,
            "downscale_delay_s": cfg.downscale_delay_s,
            "look_back_period_s": cfg.look_back_period_s,
        }
    else:
        options["num_replicas"] = cfg.min_replicas
    return options


def build_app(family: str, entry: ModelEntry) -> Application:
    """Bind a family's deployment to its registry entry with the entry's Serve options.

    Deploy it with ``serve.run(build_app(f, e), name=app_name(f), route_prefix=None)``.

    Args:
        family: Model family key.
        entry: The registry entry of the family.

    Returns:
        The application, not yet running.

    Raises:
        ConfigError: If no deployment exists for ``family`` (a family that is not built in and
            whose entry sets no ``kind``), or a bundle or exported network does not fit its entry
            (one problem per field, ``models.<family>.<field>: ...``).
        ModelWeightsError: The weights file is missing or does not match its sha256; checked
            here, before anything is deployed, so startup stops with the file named.
    """
    deployment = ModelDeployment if entry.kind is not None else FAMILIES.get(family)
    if deployment is None:
        raise ConfigError(
            f"models.{family}",
            [
                f"models.{family}: got family {family!r}; expected one of {sorted(FAMILIES)}, or an entry "
                "with kind (a MONAI bundle or an exported network)"
            ],
        )
    resolve_weights(entry)
    if entry.kind is not None:
        problems = deploy_problems(family, entry)
        if problems:
            raise ConfigError(f"models.{family}", problems)
    cfg = entry.serve
    if cfg.max_ongoing_requests < cfg.max_batch_size:
        # Not a warning: a study request sends all its slices at once, so one request can fill
        # a batch; only one-input requests (radiographs) are capped by max_ongoing_requests.
        logger.info(
            "%s: max_ongoing_requests %d < max_batch_size %d: batches of one-input requests never fill",
            family,
            cfg.max_ongoing_requests,
            cfg.max_batch_size,
        )
    options = deployment_options(cfg)
    logger.info("Serve options of %s: %s", family, options)
    return deployment.options(name=family, **options).bind(entry, family)
