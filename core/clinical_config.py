"""Config of results for readers (issue 12): the alert policy, key images, agreement floor, webhooks.

Kept apart from ``core.config`` (which grew past a readable size); ``AppConfig.clinical`` uses
this model. The policy itself (roles, rules, users) is its own file (``core.alert_policy``), so
it can be reloaded without a restart and audited on each change.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ClinicalConfig", "WebhookConfig"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookConfig(_Model):
    """How per-role paging webhooks (``RolePolicy.webhook`` in the alert policy) are called."""

    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Per request")
    max_attempts: int = Field(default=10, ge=1, description="Attempts before a push is given up (dead)")
    backoff_s: float = Field(default=1.0, gt=0, description="First retry delay; doubles per attempt, at most 5 min")
    ca_file: str | None = Field(default=None, description="CA bundle for the webhooks' https (default: system)")


class ClinicalConfig(_Model):
    """Results for readers (issue 12): who sees which alerts, reviews, pushes, key images."""

    policy_file: str | None = Field(
        default=None,
        description="Alert policy YAML (core.alert_policy; see configs/roles.example.yaml); unset: "
        "no worklist, review routes or pushes",
    )
    policy_reload_s: float = Field(
        default=2.0, gt=0, description="How often the policy file is checked for changes (reload without restart)"
    )
    key_images: bool = Field(
        default=False,
        description="Write a Secondary Capture key image per positive finding and a Key Object "
        "Selection with each SR (for viewers that do not show Parametric Maps)",
    )
    agreement_floor: float = Field(
        default=0.8, ge=0, le=1, description="Alert when a model version's monthly agreement rate falls below"
    )
    agreement_min_reviews: int = Field(default=20, ge=1, description="Reviews a month needs before it can alert")
    agreement_period_s: float = Field(
        default=600.0, gt=0, description="How often the auditor computes the agreement rates and alerts on them"
    )
    webhooks: WebhookConfig = Field(default_factory=WebhookConfig, description="Paging webhooks")
