"""The one configuration schema (``AppConfig``) and its pure parser.

Reading files is the composition root's job (``actors.pipeline.load_config``); this module only
turns a mapping into a validated, frozen ``AppConfig`` or raises ``ConfigError`` naming every bad
field with what was received and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.api_config import ApiConfig, DicomwebDestinationConfig
from core.audit_export_config import AuditCollectorConfig
from core.clinical_config import ClinicalConfig, WebhookConfig
from core.errors import ConfigError
from core.export_config import ExportConfig
from core.exposure import exposure_problems
from core.limits_config import DimseLimitsConfig
from core.placement import CELL_PATTERN, ClusterConfig

__all__ = [
    "AppConfig",
    "AssemblyConfig",
    "ClinicalConfig",
    "EhrConfig",
    "FhirEndpointConfig",
    "FindingCode",
    "FindingSpec",
    "Hl7Config",
    "ListenerConfig",
    "LoggingConfig",
    "MetricsConfig",
    "MllpListenerConfig",
    "ModelCard",
    "ModelEntry",
    "ModelInputSpec",
    "PacsConfig",
    "PriorsConfig",
    "RayConfig",
    "RayTlsConfig",
    "RetryConfig",
    "ReviewConfig",
    "RoutingConfig",
    "RoutingRule",
    "SRConfig",
    "ServeDeploymentConfig",
    "SourceCompletionConfig",
    "StageConfig",
    "StagesConfig",
    "StorageConfig",
    "TlsConfig",
    "TracingConfig",
    "TrafficConfig",
    "ValidationConfig",
    "WebhookConfig",
    "app_name",
    "cell_storage",
    "parse_config",
]

AE_TITLE = r"^[A-Za-z0-9_\-. ]{1,16}$"
"""PS3.5 6.2 AE VR: up to 16 characters of the default repertoire; we forbid backslash."""
UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
"""PS3.5 9.1: dotted numeric components without leading zeros."""


def app_name(family: str, version: str | None = None) -> str:
    """The Ray Serve application name of a model family (shared by actors and serve).

    The family entry's own version is ``model-<family>``; another version of it deployed beside
    it (``ModelEntry.versions``) is ``model-<family>--<version>``.

    >>> app_name("chest_xray")
    'model-chest_xray'
    >>> app_name("chest_xray", "2.0.0")
    'model-chest_xray--2.0.0'
    """
    return f"model-{family}" if version is None else f"model-{family}--{version}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Model):
    """TLS for a DICOM or MLLP endpoint (PS3.15 B.12: TLS 1.2 or newer)."""

    certificate: str = Field(description="PEM certificate file of this endpoint")
    private_key: str = Field(description="PEM private key file of this endpoint")
    ca_certificates: str = Field(description="PEM file of CAs whose peers are trusted")
    require_client_certificate: bool = Field(
        default=True, description="Server side: refuse peers without a trusted certificate"
    )
    server_hostname: str | None = Field(
        default=None, description="Client side: the name to verify in the server certificate"
    )


class RayTlsConfig(_Model):
    """Ray's own mutual TLS on every gRPC channel between nodes and drivers."""

    certificate: str = Field(description="PEM certificate, valid as server and client for every node address")
    private_key: str = Field(description="PEM private key of the certificate")
    ca_certificates: str = Field(description="PEM file of the CA that signed every node's certificate")


class ListenerConfig(_Model):
    """The DICOM C-STORE / C-ECHO SCP that receives studies."""

    ae_title: str = Field(default="PACSAI", pattern=AE_TITLE, description="Our AE title")
    host: str = Field(default="127.0.0.1", description="Address to bind; 0.0.0.0 for all")
    port: int = Field(default=11112, ge=0, le=65535, description="DIMSE port; 0 picks a free one")
    check_called_ae_title: bool = Field(default=True, description="Reject associations not addressed to ae_title")
    allowed_calling_ae_titles: tuple[str, ...] = Field(
        default=(),
        description="If not empty, only these calling AE titles may associate; required on a "
        "non-loopback bind (core.exposure)",
    )
    calling_ae_subjects: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="With tls (client certificates): calling AE title -> the certificate subject "
        "CNs that may call as it; every allowed calling AE title needs an entry",
    )
    allow_plaintext: bool = Field(
        default=False,
        description="Accept DICOM without TLS on a non-loopback host (logged loudly at start); "
        "unset, such a bind is a config error",
    )
    min_free_bytes: int = Field(
        default=1 << 30,
        ge=0,
        description="Below this much free space on the spool disk, C-STORE answers 0xA700",
    )
    max_pdu_size: int = Field(
        default=256 << 10,
        ge=0,
        description="Maximum PDU we receive (announced; a longer PDU closes the association); 0 means unlimited",
    )
    limits: DimseLimitsConfig = Field(
        default_factory=DimseLimitsConfig,
        description="Hostile-input bounds: data set size, inflate cap, association deadline, "
        "per-peer associations, rejected/ quota",
    )
    network_timeout_s: float = Field(default=60.0, gt=0, description="Idle association timeout")
    max_associations: int = Field(default=16, ge=1, description="Concurrent associations")
    group_commit_max: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="Most instances one group commit makes durable together (one directory fsync "
        "per spool directory, one ledger transaction); 1 commits each instance alone",
    )
    instances: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Listener actors on each ingress node sharing the port (SO_REUSEPORT: the "
        "kernel spreads associations over them); more than 1 needs a fixed port",
    )
    tls: TlsConfig | None = Field(default=None, description="Accept only TLS if set")

    @model_validator(mode="after")
    def _shared_port_is_fixed(self) -> ListenerConfig:
        if self.instances > 1 and self.port == 0:
            raise ValueError(f"instances {self.instances} share one port: set a fixed port, not 0")
        return self


class PacsConfig(_Model):
    """The PACS that receives our results and answers queries."""

    ae_title: str = Field(pattern=AE_TITLE, description="The PACS's AE title")
    host: str = Field(description="The PACS's host name or address")
    port: int = Field(ge=1, le=65535, description="The PACS's DIMSE port")
    calling_ae_title: str = Field(default="PACSAI", pattern=AE_TITLE, description="Our AE title when we call the PACS")
    timeout_s: float = Field(default=30.0, gt=0, description="Connect and DIMSE timeout")
    tls: TlsConfig | None = Field(default=None, description="Use TLS to the PACS if set")
    deliver_by: Literal["dimse", "dicomweb"] = Field(
        default="dimse", description="How results reach the PACS: C-STORE, or STOW-RS to `dicomweb`"
    )
    dicomweb: DicomwebDestinationConfig | None = Field(
        default=None, description="The PACS's DICOMweb service (STOW-RS delivery)"
    )

    @model_validator(mode="after")
    def _dicomweb_needs_its_url(self) -> PacsConfig:
        if self.deliver_by == "dicomweb" and self.dicomweb is None:
            raise ValueError("pacs.dicomweb: missing; expected the DICOMweb URL when deliver_by is dicomweb")
        return self


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""An environment variable's name (secrets are referenced by name, never stored in YAML)."""


class LedgerConfig(_Model):
    """The database behind the ledger, the HL7 context store and the EHR outbox."""

    backend: Literal["sqlite", "postgresql"] = Field(
        default="sqlite",
        description="sqlite: one file per store under var_dir (one machine); postgresql: a "
        "shared server, so every node of a cluster sees the same state",
    )
    dsn_env: str | None = Field(
        default=None,
        pattern=ENV_NAME,
        description="postgresql: the environment variable holding the libpq DSN or URL (the "
        "DSN itself never goes in a file or a log line)",
    )
    schema_prefix: str = Field(
        default="pacsai",
        pattern=r"^[a-z_][a-z0-9_]{0,40}$",
        description="postgresql: stores live in schemas <prefix>_ledger, <prefix>_context and "
        "<prefix>_ehr (PHI apart, so it can be granted apart)",
    )
    pool_max: int = Field(default=4, ge=1, le=64, description="postgresql: most pooled connections per process")

    @model_validator(mode="after")
    def _dsn_for_postgresql(self) -> LedgerConfig:
        if self.backend == "postgresql" and not self.dsn_env:
            raise ValueError(
                "dsn_env: got nothing; expected the name of the environment variable that holds the PostgreSQL DSN"
            )
        return self


class AuditConfig(_Model):
    """The audit trail's signing key and where its chain head is exported (``core.audit_seal``)."""

    key_file: str | None = Field(
        default=None,
        description="PEM (PKCS#8) file of the Ed25519 private key that signs audit entries "
        "(openssl genpkey -algorithm ed25519, or pacsai audit keygen); keep it apart from the "
        "ledger, readable by the service account only",
    )
    key_env: str | None = Field(
        default=None,
        pattern=ENV_NAME,
        description="Environment variable holding the signing key (PEM, or base64 of the 32-byte "
        "seed); used when key_file is unset",
    )
    demo_key: bool = Field(
        default=True,
        description="With neither key_file nor key_env: true generates a key under "
        "<var_dir>/audit (logged as a warning: not for production); false refuses to start",
    )
    trusted_public_keys: list[str] = Field(
        default_factory=list,
        description="Public keys (base64 of the 32 raw bytes) of earlier, rotated signing keys "
        "whose entries must still verify; the current key is always trusted",
    )
    head_dir: str | None = Field(
        default=None,
        description="Where the newest chain head is exported (chain-head.json), so deleting the "
        "newest entries is detected; unset: <var_dir>/audit. Production: a directory the "
        "ledger's host cannot rewrite (another machine's mount)",
    )
    syslog_address: str | None = Field(
        default=None,
        pattern=r"^(/\S+|[A-Za-z0-9.\-\[\]:]+:\d{1,5})$",
        description="Where each exported head is also sent as an RFC 5424 syslog line: host:port "
        "(UDP) or a socket path (/dev/log); unset: not sent",
    )
    collector: AuditCollectorConfig | None = Field(
        default=None,
        description="Audit record repository: every entry sent as a DICOM audit message (PS3.15 A.5) "
        "over syslog/TLS (RFC 5424/5425); unset: not sent",
    )


class EncryptionConfig(_Model):
    """Data at rest sealed with AES-256-GCM (``core.envelope``) under versioned data keys."""

    enabled: bool = Field(
        default=True,
        description="Seal PHI-bearing files and columns at rest; false stores them in clear (logged as a warning)",
    )
    key_file: str | None = Field(
        default=None,
        description='JSON file {"current": id, "keys": {id: base64 of 32 bytes}} holding the '
        "data keys (pacsai keys rotate adds one); keep it apart from var_dir, mode 0600",
    )
    key_env: str | None = Field(
        default=None,
        pattern=ENV_NAME,
        description="Environment variable holding the same JSON as key_file; used when key_file is unset",
    )
    demo_key: bool = Field(
        default=True,
        description="With neither key_file nor key_env: true generates a key file under "
        "<var_dir>/keys (logged as a warning: not for production); false refuses to start",
    )


class RetentionConfig(_Model):
    """How long stored data is kept (``core.retention``); ``null`` keeps it forever."""

    spool_after_delivery_days: float | None = Field(
        default=None, ge=0, description="Days a spool file is kept after its study's results were delivered"
    )
    quarantine_days: float | None = Field(
        default=None, ge=0, description="Days a held or discarded quarantined instance is kept after its hold"
    )
    rejected_days: float | None = Field(
        default=None, ge=0, description="Days rejected data (files under rejected/, HL7 rejects) is kept"
    )
    hl7_raw_days: float | None = Field(
        default=None, ge=0, description="Days a raw HL7 message is kept after it was audited (its digest stays)"
    )
    period_s: float = Field(
        default=3600.0, gt=0, description="How often each cell's purge loop runs (in the cell's first listener)"
    )


class StorageConfig(_Model):
    """Where durable state lives on this machine."""

    var_dir: str = Field(default="./var", description="Root of spool, ledger and outbox")
    ledger: LedgerConfig = Field(
        default_factory=lambda: LedgerConfig(),
        description="Where the ledger, the HL7 context store and the EHR outbox live",
    )
    audit: AuditConfig = Field(
        default_factory=lambda: AuditConfig(),
        description="The audit trail's signing key and chain head export",
    )
    encryption: EncryptionConfig = Field(
        default_factory=lambda: EncryptionConfig(),
        description="AES-256-GCM sealing of PHI at rest and where its data keys come from",
    )
    retention: RetentionConfig = Field(
        default_factory=lambda: RetentionConfig(),
        description="How long the spool, quarantine, rejected data and raw HL7 are kept; each purge is audited",
    )
    inline_record_max_bytes: int = Field(
        default=4096,
        ge=256,
        le=65536,
        description="A job record section longer than this (JSON bytes) is stored as a "
        "content-addressed blob under var/blobs and the ledger row keeps its reference",
    )
    cell: str = Field(
        default="",
        pattern=f"{CELL_PATTERN}|^$",
        description="Set by the composition root, not in files: the ingress cell whose jobs this "
        "process leases and whose files live under var_dir ('' on one machine)",
    )


CompletionMode = Literal["quiet_period", "pacs_counts"]
"""How a study is judged complete when no stronger evidence speaks: silence only, or the
PACS's instance counts (then silence where the PACS cannot tell)."""
CountScope = Literal["study", "series"]
"""Which PACS counts must match: the whole study, or only the series we received."""
PushedEvidence = Literal["mpps", "ian", "order_status"]
"""Completion evidence the bridge is told rather than asks for: MPPS (PS3.4 F), IHE Instance
Availability Notification (PS3.4 R) and the RIS order status (HL7 ORC-5 / OBR-25)."""
MODALITY = r"^[A-Z0-9_]{1,16}$"
"""PS3.5 CS value of Modality (0008,0060)."""

DEFAULT_QUIET_BY_MODALITY: dict[str, float] = {
    "CT": 10.0,
    "MR": 10.0,
    "PT": 10.0,
    "NM": 10.0,
    "XA": 5.0,
    "RF": 5.0,
    "US": 5.0,
    "MG": 3.0,
    "CR": 2.0,
    "DX": 2.0,
}
"""Quiet periods by modality: CT, MR, PET and NM series stream slice by slice while the scanner
reconstructs; a radiograph is one or a few instances sent at once."""


class SourceCompletionConfig(_Model):
    """Completion rule for studies sent by one calling AE title."""

    completion: CompletionMode = Field(description="quiet_period, or pacs_counts (C-FIND counts)")
    quiet_period_s: float | None = Field(
        default=None,
        ge=0,
        description="Quiet period for this sender, whatever the modality; None: "
        "assembly.quiet_period_by_modality, else assembly.quiet_period_s",
    )
    count_scope: CountScope | None = Field(default=None, description="study or series; None: assembly.count_scope")
    evidence: tuple[PushedEvidence, ...] | None = Field(
        default=None, description="Pushed evidence trusted for this sender; None: assembly.evidence"
    )
    settle_s: float | None = Field(
        default=None, ge=0, description="pacs_counts settle window for this sender; None: assembly.settle_s"
    )


class AssemblyConfig(_Model):
    """When a study counts as complete (DESIGN.md "Study completion").

    Evidence in order of strength: MPPS, IHE IAN, the RIS order status, PACS counts with
    hysteresis, then the quiet period. The strongest evidence present decides.
    """

    quiet_period_s: float = Field(
        default=2.0,
        ge=0,
        description="Seconds without a new instance before a study is complete, for modalities "
        "not in quiet_period_by_modality",
    )
    quiet_period_by_modality: dict[Annotated[str, Field(pattern=MODALITY)], Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: dict(DEFAULT_QUIET_BY_MODALITY),
        description="Quiet period by Modality (the longest of a study's modalities applies); "
        "{} uses quiet_period_s for every modality",
    )
    completion: CompletionMode = Field(
        default="quiet_period",
        description="Rule for senders not listed in `sources`: quiet_period, or pacs_counts "
        "(complete once the PACS's NumberOf*RelatedInstances equal what we hold and stay so "
        "for settle_s)",
    )
    evidence: tuple[PushedEvidence, ...] = Field(
        default=("mpps", "ian", "order_status"),
        description="Pushed evidence trusted when present, before counts and the quiet period: "
        "mpps, ian, order_status (strongest first, whatever the order here)",
    )
    count_scope: CountScope = Field(
        default="study",
        description="pacs_counts, ian and mpps: 'study' needs every series the PACS holds; 'series' "
        "only the series we received (for PACS forwarding rules that send part of a study)",
    )
    settle_s: float = Field(
        default=5.0,
        ge=0,
        description="pacs_counts: matching counts must hold, unchanged and with no arrival, "
        "this long before the study is complete (a PACS forwarding each instance as stored "
        "matches after every slice); 0 trusts one fresh match",
    )
    order_settle_s: float = Field(
        default=2.0,
        ge=0,
        description="order_status: after the RIS reports the order complete, complete once "
        "nothing has arrived for this long",
    )
    max_wait_s: float = Field(
        default=600.0,
        gt=0,
        description="Evidence says more is coming (MPPS in progress or listing instances we "
        "lack, IAN, PACS counts), yet nothing arrived for this long: complete anyway, marked "
        "partial (audited as max_wait)",
    )
    requery_s: float = Field(
        default=5.0,
        gt=0,
        description="pacs_counts: least seconds between count queries for one study while "
        "instances stream in, unless our count just reached the PACS's last answer, a lull "
        "began or a settle window ends",
    )
    lull_s: float = Field(
        default=1.0,
        gt=0,
        description="pacs_counts: once nothing has arrived for this long (or the quiet period, "
        "if shorter), ask the PACS again; a matching answer starts the settle window",
    )
    query_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="pacs_counts: connect and C-FIND timeout of a count query; a slower PACS "
        "cannot tell, and the quiet period decides",
    )
    early_window_s: float = Field(
        default=600.0,
        ge=0,
        description="An instance arriving this soon after its study was completed on counts, "
        "order status or silence shows that rule completed it early for that sender",
    )
    tighten_after: int = Field(default=1, ge=1, description="Early completions of one sender before its rule tightens")
    tighten_factor: float = Field(
        default=4.0,
        ge=1.0,
        description="Each tightening multiplies the sender's settle window, order settle and "
        "quiet period by this (audited; up to max_settle_s)",
    )
    max_settle_s: float = Field(default=120.0, gt=0, description="Ceiling of a tightened settle window or quiet period")
    sources: dict[Annotated[str, Field(pattern=AE_TITLE)], SourceCompletionConfig] = Field(
        default_factory=dict, description="Per calling AE title of the sender"
    )


class RoutingRule(_Model):
    """Send series that match every given criterion to a model family (empty = any)."""

    name: str = Field(min_length=1, description="Rule name, shown in the audit trail")
    family: str = Field(min_length=1, description="Model family key in `models`")
    modalities: tuple[str, ...] = Field(default=(), description="Modality (0008,0060) values")
    body_parts: tuple[str, ...] = Field(
        default=(), description="Body Part Examined (0018,0015) values, case-insensitive"
    )
    sop_class_uids: tuple[Annotated[str, Field(pattern=UID_PATTERN)], ...] = Field(
        default=(), description="SOP Class UIDs"
    )
    series_description: str | None = Field(
        default=None, description="Regular expression searched in Series Description (0008,103E)"
    )
    priority: int = Field(default=0, ge=0, le=10, description="Priority floor for matched jobs")

    @field_validator("series_description")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"a valid regular expression; re.compile said: {exc}") from exc
        return value


class RoutingConfig(_Model):
    """Routing rules and the AI off-switches that apply from startup."""

    rules: tuple[RoutingRule, ...] = Field(default=(), description="Evaluated in order")
    ai_disabled_modalities: tuple[str, ...] = Field(
        default=(), description="Modalities for which AI is off (runtime switches override)"
    )


class FindingCode(_Model):
    """A finding's coded concept as a model declares it (SNOMED CT, RadLex or a local scheme)."""

    scheme: str = Field(
        pattern=r"^[A-Za-z0-9_.\-]{1,16}$", description="Coding Scheme Designator, e.g. SCT, RADLEX, 99LOCAL"
    )
    value: str = Field(min_length=1, max_length=64, description="Code Value")
    meaning: str = Field(min_length=1, max_length=64, description="Code Meaning")


class FindingSpec(_Model):
    """One output of a model and how to read it."""

    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Finding key, e.g. pneumothorax")
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="Present at or above this")
    critical: bool = Field(default=False, description="A positive result is a critical finding")
    code: FindingCode | None = Field(
        default=None,
        description="The finding's code; required for bundle and exported-network families, else "
        "the built-in catalogue (core.findings) names it",
    )


class ModelInputSpec(_Model):
    """What the network takes, and how DICOM pixels become that input."""

    spatial_size: tuple[int, ...] = Field(description="(H, W) or (D, H, W) after resampling")
    channels: int = Field(default=1, ge=1, description="Input channels")
    window: tuple[float, float] | None = Field(
        default=None,
        description="(center, width) of a fixed window in modality units (HU for CT), mapped "
        "to [0, 1]; None maps the robust percentile range instead (radiographs, MR)",
    )
    spacing_mm: tuple[float, ...] | None = Field(
        default=None,
        description="Resample to this spacing (one value per axis of spatial_size, mm) and "
        "centre-crop or pad to spatial_size; None fits the whole image or volume into it",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelInputSpec:
        if self.window is not None and self.window[1] <= 0:
            raise ValueError(f"window width {self.window[1]} is not positive")
        if self.spacing_mm is not None and (
            len(self.spacing_mm) != len(self.spatial_size) or min(self.spacing_mm) <= 0
        ):
            raise ValueError(
                f"spacing_mm {self.spacing_mm} does not give one positive spacing per axis of "
                f"spatial_size {self.spatial_size}"
            )
        return self


class ServeDeploymentConfig(_Model):
    """Ray Serve options of one model deployment. Every resource request lives here."""

    num_cpus: float = Field(default=0.5, ge=0, description="CPUs per replica (fractions allowed)")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per replica")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources per replica, e.g. {model: 0.01} to place replicas on "
        "the model nodes of a CPU-only cluster (GPU nodes: num_gpus)",
    )
    torch_threads: int = Field(default=0, ge=0, description="torch threads per replica; 0 = auto")
    max_batch_size: int = Field(default=8, ge=1, description="@serve.batch max_batch_size")
    batch_wait_timeout_s: float = Field(default=0.02, ge=0, description="@serve.batch wait")
    min_replicas: int = Field(default=1, ge=0, description="Autoscaling lower bound")
    max_replicas: int = Field(default=1, ge=1, description="Autoscaling upper bound")
    target_ongoing_requests: float = Field(
        default=8.0, gt=0, description="Autoscaling target of ongoing requests per replica"
    )
    upscale_delay_s: float = Field(
        default=30.0, ge=0, description="Autoscaling: load above target this long adds replicas"
    )
    downscale_delay_s: float = Field(
        default=600.0, ge=0, description="Autoscaling: load below target this long removes replicas"
    )
    look_back_period_s: float = Field(
        default=30.0,
        gt=0,
        description="Autoscaling: ongoing requests are averaged over this window (Serve's look_back_period_s)",
    )
    max_ongoing_requests: int = Field(
        default=16, ge=1, description="Per replica; must exceed max_batch_size to fill batches"
    )
    max_queued_requests: int = Field(
        default=64, ge=-1, description="Requests waiting beyond that are rejected (backpressure)"
    )
    health_check_period_s: float = Field(default=10.0, gt=0, description="check_health period")
    request_timeout_s: float = Field(default=120.0, gt=0, description="Caller-side timeout")

    @model_validator(mode="after")
    def _bounds(self) -> ServeDeploymentConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class ModelCard(_Model):
    """What a model's publisher declares about it (from a bundle's metadata or a spec file)."""

    description: str = Field(default="", description="What the network does")
    intended_use: str = Field(default="", description="Intended use, as declared")
    training_data: str = Field(default="", description="Training data description (bundle: data_source)")
    performance: str = Field(default="", description="Performance claims (bundle: eval_metrics)")
    license: str = Field(default="", description="Licence (bundle: license, else LICENSE's first line)")
    authors: str = Field(default="", description="Authors")
    references: tuple[str, ...] = Field(default=(), description="Publications")


class TrafficConfig(_Model):
    """Which studies a version that is not the live one sees (issue 17).

    ``off``: none (deployed, ready for a promote or a rollback). ``canary``: ``percent`` of the
    studies, chosen by a keyed hash of the Study Instance UID, so a study always meets the same
    version. ``rule``: the studies of the listed modalities and / or sending AE titles (sites).
    ``shadow``: every study, beside the live version; its results are stored and compared but never
    sent to the PACS or shown to readers.
    """

    mode: Literal["off", "canary", "rule", "shadow"] = Field(default="off", description="How it gets studies")
    percent: float = Field(default=0.0, ge=0.0, le=100.0, description="canary: share of studies, in %")
    modalities: tuple[str, ...] = Field(default=(), description="rule: studies of these modalities")
    calling_aes: tuple[str, ...] = Field(default=(), description="rule: studies sent by these AE titles (sites)")

    @model_validator(mode="after")
    def _complete(self) -> TrafficConfig:
        if self.mode == "canary" and not 0 < self.percent < 100:
            raise ValueError(f"canary percent {self.percent}; expected more than 0 and less than 100")
        if self.mode == "rule" and not (self.modalities or self.calling_aes):
            raise ValueError("rule: no modalities and no calling_aes; expected at least one")
        return self


class ModelEntry(_Model):
    """One model in the registry: which weights, which outputs, how it is served.

    A built-in family (``models.families``) names its weights, input and findings here. A family
    from a MONAI bundle (``bundle``) or from an exported ONNX / TorchScript network (``weights`` +
    ``spec``) needs no code: ``core.bundles.expand_models`` fills name, version, weights, input,
    findings, kind and card from the bundle's ``configs/metadata.json`` or the spec file before
    this schema sees the entry (``actors.pipeline.load_config`` reads the files). Other versions of
    the family deploy beside this one (``versions``); which one is live is runtime state
    (``pacsai models promote|rollback``).
    """

    name: str = Field(min_length=1, description="Algorithm name (TID 4019 Algorithm Name)")
    version: str = Field(min_length=1, description="Algorithm version (TID 4019)")
    weights: str = Field(description="state_dict or TorchScript file; relative to the CWD")
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected sha256 of the weights, pinned here; required unless demo (then the "
        "sidecar '<weights>.sha256' may hold it); a sidecar beside pinned weights must agree",
    )
    demo: bool = Field(default=False, description="Trained on synthetic phantoms; not clinical")
    manufacturer: str = Field(default="PACS-AI Bridge", description="Algorithm manufacturer")
    input: ModelInputSpec = Field(description="Network input")
    heatmaps: bool = Field(
        default=True,
        description="Grad-CAM heatmap (Parametric Map) and image region for each positive finding",
    )
    findings: tuple[FindingSpec, ...] = Field(min_length=1, description="Outputs, in order")
    serve: ServeDeploymentConfig = Field(default_factory=ServeDeploymentConfig, description="Ray Serve options")
    bundle: str | None = Field(
        default=None, description="MONAI bundle directory (configs/metadata.json, models/model.ts|.onnx|.pt)"
    )
    spec: str | None = Field(
        default=None,
        description="YAML file saying what a bundle's metadata would, for a bare ONNX / TorchScript `weights` file",
    )
    kind: Literal["planar", "slices", "volume"] | None = Field(
        default=None,
        description="Bundle and exported families: one input per 2D frame (planar), per CT slice "
        "(slices) or per 3D series (volume); None: a built-in family's own predictor",
    )
    output_activation: Literal["sigmoid", "softmax", "none"] = Field(
        default="sigmoid", description="Turns the network's outputs into probabilities (none: they already are)"
    )
    preprocessing: Literal["declared", "bundle"] = Field(
        default="declared",
        description="declared: input.window / percentile range; bundle: the bundle's own "
        "inference.json `preprocessing` transforms (MONAI bundle API), after resampling",
    )
    modalities: tuple[str, ...] = Field(
        default=(), description="Modalities the model serves; routing rules to it must stay within them"
    )
    body_parts: tuple[str, ...] = Field(default=(), description="Body parts the model serves")
    card: ModelCard = Field(default_factory=ModelCard, description="Declared model card")
    traffic: TrafficConfig = Field(
        default_factory=TrafficConfig, description="Studies this version sees while another is live"
    )
    versions: dict[str, ModelEntry] = Field(
        default_factory=dict,
        description="Other versions of this family, deployed side by side; each names what differs "
        "from this entry (weights, sha256, bundle, traffic, ...)",
    )

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, data: Any) -> Any:
        """A version inherits the family entry's fields it does not name; a version from its
        own bundle or spec inherits only ``serve``. Its key is its version."""
        if not isinstance(data, Mapping) or not isinstance(data.get("versions"), Mapping):
            return data
        parent = {k: v for k, v in data.items() if k not in ("versions", "traffic")}
        versions = {}
        for key, child in data["versions"].items():
            if not isinstance(child, Mapping):
                versions[key] = child
                continue
            if "bundle" in child or "spec" in child:
                base = {"serve": parent["serve"]} if "serve" in parent else {}
            else:
                base = dict(parent)
                if "weights" in child and "sha256" not in child:
                    base.pop("sha256", None)  # other weights: their own sha256 or sidecar
            versions[key] = {**base, **child, "version": child.get("version", str(key))}
        return {**data, "versions": versions}

    @model_validator(mode="after")
    def _versions(self) -> ModelEntry:
        for key, child in self.versions.items():
            if child.version != key:
                raise ValueError(f"versions.{key}: its model says version {child.version!r}; expected {key!r}")
            if child.versions:
                raise ValueError(f"versions.{key}: has versions of its own; expected them all under the family")
        if self.version in self.versions:
            raise ValueError(f"versions.{self.version}: the family entry is already version {self.version}")
        if self.bundle is not None or self.spec is not None:
            missing = [f"findings.{i}.code" for i, f in enumerate(self.findings) if f.code is None]
            if missing:
                raise ValueError(f"{', '.join(missing)}: missing; expected a code for every finding of a bundle model")
            if self.kind is None:
                raise ValueError("kind: missing; expected planar, slices or volume for a bundle model")
        return self

    def all_versions(self) -> dict[str, ModelEntry]:
        """This entry and its other versions, by version."""
        return {self.version: self, **self.versions}


class StageConfig(_Model):
    """How one pipeline stage pulls work from the ledger."""

    concurrency: int = Field(default=2, ge=1, description="Jobs in flight at once")
    num_cpus: float = Field(default=0.0, ge=0, description="Ray CPUs for the stage actor")


class StagesConfig(_Model):
    """All pipeline stages."""

    poll_interval_s: float = Field(
        default=0.05, gt=0, description="Idle poll of the ledger where it cannot notify (SQLite)"
    )
    notify_wait_s: float = Field(
        default=1.0,
        gt=0,
        description="PostgreSQL: longest idle wait for a NOTIFY before looking again (a job "
        "due later wakes its stage at its not_before anyway)",
    )
    lease_s: float = Field(default=60.0, gt=0, description="A job lease; expired leases re-run")
    assembler: StageConfig = Field(default_factory=StageConfig, description="Study assembler")
    validator: StageConfig = Field(default_factory=StageConfig, description="Validator")
    router: StageConfig = Field(default_factory=StageConfig, description="Router")
    prior_linker: StageConfig = Field(default_factory=StageConfig, description="Prior linker")
    inference: StageConfig = Field(default_factory=lambda: StageConfig(concurrency=16), description="Model dispatcher")
    sr_writer: StageConfig = Field(default_factory=StageConfig, description="SR writer")
    delivery: StageConfig = Field(default_factory=StageConfig, description="Outbox to PACS")


class RetryConfig(_Model):
    """Exponential backoff and the dead-letter limit."""

    max_attempts: int = Field(default=5, ge=1, description="Failures before a job is dead")
    base_delay_s: float = Field(default=1.0, gt=0, description="Delay after the first failure")
    multiplier: float = Field(default=2.0, ge=1.0, description="Backoff growth per failure")
    max_delay_s: float = Field(default=300.0, gt=0, description="Backoff cap")
    unavailable_delay_s: float = Field(
        default=2.0, gt=0, description="Wait before retrying a peer that was unreachable"
    )


class RayConfig(_Model):
    """Where the actors run."""

    address: str | None = Field(
        default=None, description="Ray cluster address; None starts a local Ray (or RAY_ADDRESS)"
    )
    num_cpus: int | None = Field(default=None, ge=1, description="Local Ray only: CPUs to offer")
    namespace: str = Field(default="pacsai", description="Ray namespace of our named actors")
    actor_max_restarts: int = Field(default=-1, ge=-1, description="-1 restarts forever")
    auth_token_file: str | None = Field(
        default=None,
        description="Ray token authentication: the file holding the cluster's token (0600); sets "
        "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH for `pacsai up`. Every `ray start` of the "
        "cluster needs the same settings",
    )
    tls: RayTlsConfig | None = Field(
        default=None,
        description="Ray's mutual TLS between nodes (RAY_USE_TLS and RAY_TLS_*); every node of "
        "the cluster must be started with the same",
    )


class PriorsConfig(_Model):
    """Prior studies: look-up at the PACS, retrieval, and interval change against prior AI results."""

    enabled: bool = Field(default=False, description="Look up priors at the PACS (needs `pacs`)")
    lookback_days: int = Field(
        default=1825,
        ge=1,
        description="Oldest prior considered, in days before the current study's Study Date",
    )
    same_modality: bool = Field(default=True, description="Only priors of the current modality")
    same_body_part: bool = Field(
        default=True, description="Only priors with a series of the current Body Part Examined"
    )
    max_candidates: int = Field(default=20, ge=1, description="Candidate studies inspected")
    link_unverified: bool = Field(
        default=False,
        description="Link an earlier study whose identity cannot be checked (Patient's Name or "
        "Birth Date empty on either side, or Issuer of Patient ID on one side only); when "
        "false it is refused, audited and flagged for review",
    )
    retrieve: Literal["c-move", "c-get"] = Field(
        default="c-move", description="How prior series reach us: C-MOVE to our listener, or C-GET"
    )
    compare_images: tuple[str, ...] = Field(
        default=(),
        description="Model families that compare images: their prior series is retrieved and "
        "the model runs on it too; other families link only",
    )
    probability_change: float = Field(default=0.15, gt=0, le=1, description="Probability change reported as up or down")
    size_change_mm: float = Field(default=2.0, gt=0, description="Size change reported, in mm")
    query_timeout_s: float = Field(default=5.0, gt=0, description="C-FIND / connect timeout")
    retrieve_timeout_s: float = Field(default=120.0, gt=0, description="C-MOVE / C-GET timeout")
    unavailable_wait_s: float = Field(
        default=10.0,
        ge=0,
        description="PACS unreachable: jobs wait this long (per outage), then go on without "
        "priors and their SR says so",
    )


class SRConfig(_Model):
    """Identity of the result objects we write."""

    manufacturer: str = Field(default="PACS-AI Bridge", description="General Equipment")
    series_number: int = Field(default=9900, ge=1, description="Series Number of AI SR series")
    institution_name: str | None = Field(default=None, description="Institution Name, if set")
    max_versions: int = Field(
        default=5,
        ge=1,
        description="SR versions per study and model family sent to the PACS; a further "
        "version is held, with an operator-visible warning (review flag), until released",
    )
    group_source_images_max: int = Field(
        default=16,
        ge=0,
        description="List the source images in each finding's measurement group only when a "
        "model read at most this many; every source is always in the evidence sequence, and a "
        "localised finding references its exact image in its region group",
    )


ReviewRoleName = Literal["pacs_admin", "radiologist", "operator"]
"""Roles that may resolve review flags (``core.review.ReviewRole``)."""


class ReviewConfig(_Model):
    """Who may resolve review flags (``pacsai review resolve``; rules in ``core.review``)."""

    reviewers: dict[Annotated[str, Field(min_length=1, max_length=64)], tuple[ReviewRoleName, ...]] = Field(
        default_factory=dict,
        description="User name (as given to `pacsai review resolve --user`) -> roles: pacs_admin "
        "(any flag), radiologist (prior flags), operator (SR version cap, sender tightened)",
    )


class ValidationConfig(_Model):
    """What the validator demands of received data (issue #4; see core.validation)."""

    decode: Literal["all_frames", "first_frame", "headers"] = Field(
        default="all_frames",
        description="Encapsulated Pixel Data: decode every frame, only the first (headers of the "
        "rest), or check frame headers only",
    )
    model_decodes: bool = Field(
        default=True,
        description="Instances a routing rule sends to a model: check only their frame headers "
        "here and let the model's replica decode them (once); one it cannot decode is quarantined "
        "by the inference stage (pixel_data_undecodable). false: `decode` applies to them too",
    )
    pixel_spacing_modalities: tuple[str, ...] = Field(
        default=("CT", "MR", "PT"),
        description="Modalities whose models measure: Pixel Spacing (0028,0030) is required",
    )
    max_pixels: int = Field(
        default=1 << 31,
        ge=1,
        description="Ceiling on Rows x Columns x Frames x Samples per Pixel, checked before any "
        "decode; a larger declaration is quarantined (pixel bomb)",
    )
    orientation_tolerance: float = Field(
        default=1e-3, gt=0, description="Largest direction-cosine difference inside one series"
    )
    position_tolerance_mm: float = Field(
        default=0.01, gt=0, description="Slices closer than this share a position (duplicates)"
    )
    gap_tolerance: float = Field(
        default=0.5,
        gt=0,
        description="A step between slices above (1 + this) x the median step is a gap",
    )


class LoggingConfig(_Model):
    """Logging. Identifiers stay out of logs unless explicitly allowed."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Root log level")
    log_identifiers: bool = Field(
        default=False,
        description="Kept for older configs; only false is accepted: pynetdicom's identifier "
        "logging (C-FIND / C-MOVE keys hold Patient ID and name) is off in every process",
    )
    dir: str | None = Field(default=None, description="Where log files go (rotated); unset: <storage.var_dir>/logs")
    max_bytes: int = Field(default=10 << 20, ge=4096, description="Rotate a log file at this size")
    backups: int = Field(default=5, ge=0, description="Rotated log files kept per process")
    json_lines: bool = Field(default=False, description="Write log files as JSON lines (for log shippers)")
    console_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING", description="What reaches the console (pacsai --verbose: INFO)"
    )

    @field_validator("log_identifiers")
    @classmethod
    def _never_identifiers(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "false; true would put patient identifiers (Patient ID, name: C-FIND / C-MOVE keys)"
                " in the logs, which nothing here allows (UIDs and keyed hashes only)"
            )
        return value


class MetricsConfig(_Model):
    """Prometheus metrics, recorded with Ray's metrics API (core.metrics has the catalogue)."""

    enabled: bool = Field(default=True, description="Record the pipeline's metrics")
    export_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Ray's Prometheus endpoint on each node (ray.init's metrics export port); unset: Ray picks",
    )
    report_interval_ms: int = Field(
        default=10000, ge=100, description="How often each Ray worker reports its metrics to its node's endpoint"
    )
    ledger_period_s: float = Field(
        default=5.0, gt=0, description="How often the ledger's gauges (jobs per state, queues) are published"
    )


class TracingConfig(_Model):
    """OpenTelemetry tracing of each study across the actors; off unless set."""

    exporter: Literal["file", "otlp"] = Field(default="file", description="Where spans go")
    file: str | None = Field(
        default=None,
        description="Span file (JSON lines) for exporter file; unset: <storage.var_dir>/traces/spans.jsonl",
    )
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces endpoint for exporter otlp, e.g. https://collector:4318/v1/traces"
    )

    @model_validator(mode="after")
    def _otlp_needs_endpoint(self) -> TracingConfig:
        if self.exporter == "otlp" and not self.otlp_endpoint:
            raise ValueError("otlp_endpoint: required when exporter is otlp")
        return self


class MllpListenerConfig(_Model):
    """The HL7 v2 MLLP listener that receives ADT and order messages (persistent connections)."""

    host: str = Field(default="127.0.0.1", description="Address to bind; 0.0.0.0 for all")
    port: int = Field(default=2575, ge=0, le=65535, description="MLLP port; 0 picks a free one")
    tls: TlsConfig | None = Field(default=None, description="Accept only TLS 1.2+ if set")
    allow_plaintext: bool = Field(
        default=False,
        description="Accept MLLP without TLS on a non-loopback host (logged loudly at start); "
        "unset, such a bind is a config error",
    )
    max_message_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="A frame longer than this is discarded up to its end block and answered AR",
    )
    max_field_chars: int = Field(default=65536, ge=64, description="A longer field is answered AE naming the field")
    idle_timeout_s: float = Field(
        default=600.0, gt=0, description="Close a connection that sends nothing for this long"
    )
    max_connections: int = Field(default=64, ge=1, description="Concurrent connections")
    max_connections_per_peer: int = Field(
        default=8, ge=1, description="Concurrent connections from one IP address; more are closed at once"
    )
    rejected_max_rows: int = Field(
        default=100_000,
        ge=1,
        description="Quota of the HL7 reject store (the 4 KiB heads of messages answered AR, kept "
        "for inspection): past it a rejected message is still answered AR but not kept (logged)",
    )
    frame_deadline_s: float = Field(
        default=60.0,
        gt=0,
        description="Most time one frame may take from its start block to its end block (a slow "
        "drip that beats idle_timeout_s); then the connection is closed",
    )


class Hl7SenderConfig(_Model):
    """One system allowed to send us HL7: where it connects from and what its MSH says."""

    address: str | None = Field(
        default=None, description="Peer IP address or network (CIDR) it connects from; unset: any address"
    )
    subject: str | None = Field(
        default=None, description="Its TLS client certificate's subject CN; unset: any (needs hl7.listener.tls)"
    )
    application: str = Field(min_length=1, description="MSH-3 Sending Application (namespace ID) it sends as")
    facility: str = Field(min_length=1, description="MSH-4 Sending Facility (namespace ID) it sends as")

    @model_validator(mode="after")
    def _identified(self) -> Hl7SenderConfig:
        if self.address is None and self.subject is None:
            raise ValueError("address, subject: both unset; expected the peer's address or certificate subject")
        return self


class Hl7Config(_Model):
    """The HL7 v2 bridge: patient and order context from the RIS / EHR (off unless set)."""

    listener: MllpListenerConfig = Field(default_factory=MllpListenerConfig, description="The MLLP listener")
    application: str = Field(
        default="PACSAI",
        min_length=1,
        description="MSH-3 Sending Application of our ACKs; with senders, MSH-5 of every message must name it",
    )
    facility: str = Field(
        default="",
        description="MSH-4 Sending Facility of our ACKs; with senders and when set, MSH-6 must name it",
    )
    senders: tuple[Hl7SenderConfig, ...] = Field(
        default=(),
        description="Who may send: peer address or certificate subject, MSH-3 and MSH-4; others "
        "get AR and an audit event. Required on a non-loopback bind; empty (loopback only): anyone",
    )
    processing_ids: tuple[str, ...] = Field(
        default=("P",), min_length=1, description="Accepted MSH-11 values; others get AR"
    )
    versions: tuple[str, ...] = Field(
        default=("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"),
        min_length=1,
        description="Accepted MSH-12 versions; others get AR",
    )
    accession_fields: tuple[Literal["IPC-1", "OBR-18", "ORC-3", "OBR-3", "OBR-20"], ...] = Field(
        default=("IPC-1", "OBR-18"),
        min_length=1,
        description="Where orders carry the accession number, first valued wins (IHE SWF: "
        "OBR-18; OMI: IPC-1; many RIS use ORC-3 / OBR-3)",
    )
    identifier_systems: dict[str, str] = Field(
        default_factory=dict,
        description="Assigning authority namespace (CX.4.1 / EI.2) -> FHIR Identifier.system",
    )
    default_assigning_authorities: dict[str, str] = Field(
        default_factory=dict,
        description="Sending facility (MSH-4, whole or its namespace ID) -> the assigning "
        "authority (CX.4 as an HD, '&' between subcomponents: 'HOSP' or 'HOSP&1.2.3&ISO') of "
        "its patient and visit IDs that name none; unlisted facilities' bare IDs are scoped "
        "to the facility and never match another facility's",
    )
    join_window_days: int = Field(
        default=1, ge=0, le=30, description="Patient ID + date join: order date within +-N days"
    )
    batch_max: int = Field(
        default=256,
        ge=1,
        description="SQLite: most messages committed (one fsync) in one group commit; 1 "
        "commits every message alone (PostgreSQL groups concurrent commits in the server)",
    )
    parse_workers: int = Field(
        default=2,
        ge=0,
        le=16,
        description="Processes that parse, check and map messages (FHIR validation included), "
        "off the MLLP event loop's GIL; on SQLite one more process stores them (one commit "
        "for what is decided together); 0 does it all in the listener",
    )
    validate_resources: bool = Field(
        default=True,
        description="Validate every mapped FHIR resource against the R4 structures before "
        "the ACK (fhir.resources; about 0.5 ms per message); the mapping is valid by "
        "construction and tested, so a site may turn this off for throughput",
    )


class FhirEndpointConfig(_Model):
    """A FHIR R4 server that takes transaction Bundles."""

    base_url: str = Field(pattern=r"^https?://\S+$", description="FHIR base URL (https unless allow_plaintext)")
    allow_plaintext: bool = Field(
        default=False, description="Allow an http:// base_url (a test server on loopback); logged loudly"
    )
    timeout_s: float = Field(default=10.0, gt=0, description="Connect and read timeout")
    token_env: str | None = Field(default=None, description="Env var holding a bearer token (never stored in YAML)")
    tls: TlsConfig | None = Field(
        default=None, description="Verify the server with these CAs and present this certificate"
    )
    patient_identifier_system: str | None = Field(
        default=None,
        description="Identifier.system for DICOM Patient ID when no HL7 context names one",
    )


class EhrConfig(_Model):
    """Results to the EHR: a FHIR DiagnosticReport per delivered SR (off unless set)."""

    fhir: FhirEndpointConfig = Field(description="Where DiagnosticReports go")
    poll_interval_s: float = Field(default=0.5, gt=0, description="Idle poll of the outboxes")
    batch: int = Field(default=16, ge=1, description="Reports sent per round")


class AppConfig(_Model):
    """The whole configuration of one PACS-AI Bridge installation."""

    site_name: str = Field(default="pacsai", min_length=1, description="Installation name")
    hash_key_env: str | None = Field(
        default=None,
        description="Env var holding the key for hashed patient identifiers; required unless every "
        "bind is loopback (demo mode: a demo key, logged as a warning)",
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Durable state")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray")
    listener: ListenerConfig = Field(default_factory=ListenerConfig, description="DICOM SCP")
    pacs: PacsConfig | None = Field(default=None, description="The PACS; required to deliver")
    assembly: AssemblyConfig = Field(default_factory=AssemblyConfig, description="Assembly")
    routing: RoutingConfig = Field(default_factory=RoutingConfig, description="Routing")
    models: dict[str, ModelEntry] = Field(default_factory=dict, description="Registry by family")
    stages: StagesConfig = Field(default_factory=StagesConfig, description="Pipeline stages")
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Retry policy")
    sr: SRConfig = Field(default_factory=SRConfig, description="Result objects")
    priors: PriorsConfig = Field(default_factory=PriorsConfig, description="Prior studies")
    review: ReviewConfig = Field(default_factory=ReviewConfig, description="Review flags")
    clinical: ClinicalConfig = Field(
        default_factory=ClinicalConfig, description="Alerts by role, reader review, key images (issue 12)"
    )
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="Validation of received data")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics")
    tracing: TracingConfig | None = Field(default=None, description="OpenTelemetry tracing; off unless set")
    hl7: Hl7Config | None = Field(default=None, description="HL7 v2 bridge; off unless set")
    ehr: EhrConfig | None = Field(default=None, description="Results to the EHR; off unless set")
    export: ExportConfig = Field(
        default_factory=ExportConfig, description="De-identified research export (pacsai export deid)"
    )
    cluster: ClusterConfig | None = Field(
        default=None, description="Ingress cells of a multi-node Ray cluster; unset: one machine"
    )
    api: ApiConfig | None = Field(
        default=None, description="HTTPS REST and DICOMweb API (Ray Serve ingress); off unless set"
    )

    @model_validator(mode="after")
    def _cluster_needs_shared_state(self) -> AppConfig:
        if self.cluster is not None and self.storage.ledger.backend != "postgresql":
            raise ValueError(
                "cluster: needs storage.ledger.backend postgresql (every node must see the same "
                "ledger; a SQLite file belongs to one machine)"
            )
        if self.cluster is not None and self.priors.enabled and self.priors.retrieve != "c-get":
            raise ValueError(
                "cluster: needs priors.retrieve c-get (a C-MOVE lands on whichever ingress node "
                "the PACS maps our AE title to, not on the cell that asked)"
            )
        if self.storage.cell:
            raise ValueError("storage.cell: set per cell by the composition root; leave it out of the file")
        return self


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at the parent of ``loc`` (for "unknown field" messages)."""
    ann: Any = AppConfig
    for part in loc[:-1]:
        ann = _step(ann, part)
    models = [a for a in _flatten(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
    return sorted(models[0].model_fields) if models else []


def _step(ann: Any, part: Any) -> Any:
    for option in _flatten(ann):
        if isinstance(option, type) and issubclass(option, BaseModel):
            field = option.model_fields.get(str(part))
            return field.annotation if field is not None else None
        args = getattr(option, "__args__", None)
        if args:  # dict[str, X], tuple[X, ...]: the element type
            return args[-1] if args[-1] is not Ellipsis else args[0]
    return None


def _flatten(annotation: Any) -> list[Any]:
    origin = getattr(annotation, "__origin__", None)
    args = getattr(annotation, "__args__", None)
    if args and origin is None:  # X | Y
        return [x for a in args for x in _flatten(a)]
    return [annotation]


def _expected(error: Mapping[str, Any]) -> str:
    msg = str(error.get("msg", ""))
    for prefix in ("Input should be ", "Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    if msg.startswith("String should "):
        return "a string that should " + msg[len("String should ") :]
    return msg[:1].lower() + msg[1:]


def _describe(error: Mapping[str, Any]) -> str:
    loc = tuple(error.get("loc", ()))
    where = ".".join(str(p) for p in loc) or "<root>"
    kind = error.get("type")
    if kind == "missing":
        return f"{where}: missing; expected a value (required field)"
    if kind == "extra_forbidden":
        known = _known_fields(loc)
        return f"{where}: unknown field; expected one of {known}"
    got = error.get("input")
    shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{where}: got {shown}; expected {_expected(error)}"


PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "RF", "XA", "IO", "PX"})
"""Projection radiography: one 2D image per view, never a volume to feed a 3D network."""


def _route_problems(cfg: AppConfig) -> list[str]:
    """Issue 17: a routing rule must not send a model what it cannot take: modalities outside
    those it declares, or radiographs to a slice-wise or volumetric network."""
    problems = []
    for i, rule in enumerate(cfg.routing.rules):
        entry = cfg.models.get(rule.family)
        if entry is None:
            continue
        for version, e in entry.all_versions().items():
            where = f"routing.rules.{i}.modalities"
            if e.modalities and not rule.modalities:
                problems.append(
                    f"{where}: empty (any modality); expected a subset of {list(e.modalities)}, the "
                    f"modalities model {rule.family} {version} declares"
                )
            outside = [m for m in rule.modalities if e.modalities and m not in e.modalities]
            if outside:
                problems.append(
                    f"{where}: got {outside}; expected only {list(e.modalities)}, the modalities "
                    f"model {rule.family} {version} declares"
                )
            flat = [m for m in rule.modalities if m in PROJECTION_MODALITIES]
            if e.kind in ("slices", "volume") and flat:
                problems.append(
                    f"{where}: got radiograph modalities {flat} for model {rule.family} {version} "
                    f"of kind {e.kind} (input.spatial_size {list(e.input.spatial_size)}); expected "
                    "cross-sectional modalities (CT, MR, PT, ...) for a slice-wise or volumetric network"
                )
    return problems


def cell_storage(cfg: AppConfig, cell: str) -> StorageConfig:
    """Where one ingress cell's files live and which instances and jobs it holds: on a cluster
    ``<var_dir>/cells/<cell>`` with ``storage.cell``; ``""`` is the config's own storage (one
    machine: the one cell).

    Raises:
        ConfigError: ``cell`` is not one of ``cluster.cells``.
    """
    if not cell:
        return cfg.storage
    cells = list(cfg.cluster.cells) if cfg.cluster is not None else []
    if cell not in cells:
        raise ConfigError("cell", [f"cluster.cells: got no cell {cell!r}; expected one of {cells}"])
    var_dir = str(PurePath(cfg.storage.var_dir) / "cells" / cell)
    return cfg.storage.model_copy(update={"var_dir": var_dir, "cell": cell})


def parse_config(raw: Mapping[str, Any] | None, source: str = "<mapping>") -> AppConfig:
    """Validate a raw mapping (e.g. parsed YAML) into an ``AppConfig``.

    Args:
        raw: The configuration tree. ``None`` (an empty file) means all defaults.
        source: Where it came from, for the error message.

    Returns:
        The validated, frozen configuration.

    Raises:
        ConfigError: Listing every invalid field with what was received and what was expected.
    """
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(source, [f"<root>: got {type(raw).__name__}; expected a mapping"])
    try:
        cfg = AppConfig.model_validate(dict(raw or {}))
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None
    problems = [
        f"routing.rules.{i}.family: got {rule.family!r}; expected one of the model families {sorted(cfg.models)}"
        for i, rule in enumerate(cfg.routing.rules)
        if rule.family not in cfg.models
    ]
    problems += _route_problems(cfg)
    problems += exposure_problems(cfg)
    problems += [
        f"priors.compare_images.{i}: got {family!r}; expected one of the model families {sorted(cfg.models)}"
        for i, family in enumerate(cfg.priors.compare_images)
        if family not in cfg.models
    ]
    if problems:
        raise ConfigError(source, problems)
    return cfg
