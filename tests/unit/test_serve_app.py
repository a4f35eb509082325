"""Serve options come from the registry entry only; every family has a deployment."""

from __future__ import annotations

from core.config import ServeDeploymentConfig
from models.families import PREDICTORS
from serve.app import FAMILIES, deployment_options


def test_every_family_with_a_predictor_is_served() -> None:
    assert set(FAMILIES) == set(PREDICTORS)


def test_gpu_replicas_autoscaling_and_queue_bounds_come_from_config() -> None:
    cfg = ServeDeploymentConfig(
        num_cpus=0.25,
        num_gpus=0.5,
        min_replicas=1,
        max_replicas=4,
        target_ongoing_requests=6,
        max_ongoing_requests=24,
        max_queued_requests=100,
        health_check_period_s=5,
    )
    options = deployment_options(cfg)
    assert options["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 0.5}
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 6,
        "upscale_delay_s": 30.0,
        "downscale_delay_s": 600.0,
        "look_back_period_s": 30.0,
    }
    assert "num_replicas" not in options
    assert (options["max_ongoing_requests"], options["max_queued_requests"]) == (24, 100)
    assert options["health_check_period_s"] == 5


def test_fixed_replicas_without_an_autoscaling_range() -> None:
    options = deployment_options(ServeDeploymentConfig(min_replicas=2, max_replicas=2))
    assert options["num_replicas"] == 2 and "autoscaling_config" not in options


def test_custom_resources_place_replicas_on_model_nodes() -> None:
    options = deployment_options(ServeDeploymentConfig(num_cpus=0.1, resources={"model": 0.01}))
    assert options["ray_actor_options"] == {"num_cpus": 0.1, "num_gpus": 0.0, "resources": {"model": 0.01}}
