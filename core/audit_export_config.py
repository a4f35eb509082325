"""Config of the audit export: DICOM audit messages over syslog/TLS to a collector.

Kept apart from ``core.config`` (which grew past a readable size); ``AuditConfig.collector``
uses this model. TLS is not optional: audit messages name studies, users and keyed patient
hashes, and RFC 5425 is the transport IHE ATNA asks for.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AuditCollectorConfig"]

SYSLOG_TOKEN = r"^[!-~]{1,48}$"
"""RFC 5424 APP-NAME: 1-48 printable US-ASCII characters, no space."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuditCollectorConfig(_Model):
    """Where every audit entry is sent as a DICOM audit message (PS3.15 A.5) over RFC 5425."""

    enabled: bool = Field(default=True, description="Send entries; false keeps the cursor where it is")
    host: str = Field(min_length=1, max_length=255, description="The collector's host name or address")
    port: int = Field(default=6514, ge=1, le=65535, description="The collector's TLS syslog port (RFC 5425: 6514)")
    ca_file: str = Field(description="PEM CAs the collector's certificate must chain to (TLS is always on)")
    cert_file: str | None = Field(
        default=None, description="PEM client certificate for mutual TLS (with key_file); unset: none presented"
    )
    key_file: str | None = Field(default=None, description="PEM private key of cert_file")
    server_hostname: str | None = Field(
        default=None, description="Name to verify in the collector's certificate; unset: host"
    )
    source_id: str | None = Field(
        default=None,
        max_length=255,
        description="AuditSourceID and syslog HOSTNAME of the messages; unset: this machine's host name",
    )
    enterprise_site_id: str | None = Field(
        default=None, max_length=255, description="AuditEnterpriseSiteID (the site or organisation); unset: omitted"
    )
    app_name: str = Field(default="pacsai", pattern=SYSLOG_TOKEN, description="RFC 5424 APP-NAME")
    batch: int = Field(default=200, ge=1, le=10000, description="Most entries sent per round before the cursor moves")
    period_s: float = Field(default=1.0, gt=0, le=60, description="Wait between rounds when nothing is new")
    timeout_s: float = Field(default=5.0, gt=0, le=120, description="Connect and send timeout")
    backoff_max_s: float = Field(
        default=60.0, gt=0, le=3600, description="Longest wait between reconnects (doubling from period_s)"
    )

    @model_validator(mode="after")
    def _cert_with_key(self) -> AuditCollectorConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file/key_file: got one; expected both (mutual TLS) or neither")
        return self
