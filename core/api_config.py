"""Config of the HTTPS front door (REST, DICOMweb) and of DICOMweb result delivery.

Kept apart from ``core.config`` (which grew past a readable size); ``AppConfig.api`` and
``PacsConfig.dicomweb`` use these models.
"""

from __future__ import annotations

from ipaddress import ip_address

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ApiConfig", "ApiTlsConfig", "DicomwebDestinationConfig", "OidcConfig", "is_loopback"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches only this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


class ApiTlsConfig(_Model):
    """The HTTPS server's certificate (TLS 1.2 or newer; Ray Serve's proxy serves it)."""

    certificate: str = Field(description="PEM certificate file of the API")
    private_key: str = Field(description="PEM private key file of the certificate")
    ca_certificates: str | None = Field(
        default=None, description="PEM CAs whose client certificates are asked for (optional mutual TLS)"
    )


class OidcConfig(_Model):
    """OIDC bearer JWTs from the hospital's identity provider, verified offline or by JWKS URL."""

    issuer: str = Field(min_length=1, description="The expected `iss` claim")
    audience: str = Field(min_length=1, description="The expected `aud` claim (this API)")
    jwks_file: str | None = Field(default=None, description="A JWKS JSON file (offline sites)")
    jwks_url: str | None = Field(default=None, description="The issuer's JWKS URL (https)")
    ca_certificates: str | None = Field(default=None, description="PEM CAs trusted for jwks_url (else the system's)")
    algorithms: tuple[str, ...] = Field(
        default=("RS256", "ES256", "PS256"), min_length=1, description="Signature algorithms accepted"
    )
    scopes_claim: str = Field(default="scope", description="Claim with the granted scopes (space separated or list)")
    subject_claim: str = Field(default="sub", description="Claim naming who the caller is (audited)")
    leeway_s: float = Field(default=30.0, ge=0, le=300, description="Clock skew tolerated on exp/nbf")

    @model_validator(mode="after")
    def _one_key_source(self) -> OidcConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("oidc: set exactly one of jwks_file or jwks_url")
        if self.jwks_url is not None and not self.jwks_url.startswith("https://"):
            raise ValueError(f"oidc.jwks_url: got {self.jwks_url!r}; expected an https:// URL")
        if any(a.upper().startswith("HS") or a.lower() == "none" for a in self.algorithms):
            raise ValueError("oidc.algorithms: symmetric and 'none' algorithms are refused; expected RS/ES/PS")
        return self


class ApiConfig(_Model):
    """The HTTPS API: REST operations and DICOMweb (STOW-RS in, QIDO-RS / WADO-RS of results).

    FastAPI behind Ray Serve's proxy (one per node where the proxy runs), with ``replicas``
    replicas of the API deployment.
    """

    host: str = Field(default="127.0.0.1", description="Address the HTTPS proxy binds; 0.0.0.0 for all")
    port: int = Field(default=8443, ge=1, le=65535, description="HTTPS port (Ray Serve's proxy needs a fixed one)")
    tls: ApiTlsConfig | None = Field(default=None, description="Certificate and key; required unless allow_plaintext")
    allow_plaintext: bool = Field(
        default=False, description="Serve plain HTTP (loopback only: a test or a local tool); logged loudly"
    )
    oidc: OidcConfig | None = Field(default=None, description="Accept OIDC bearer JWTs as well as API tokens")
    replicas: int = Field(default=1, ge=1, le=64, description="Replicas of the API deployment")
    num_cpus: float = Field(default=0.1, ge=0, description="CPUs reserved per API replica")
    max_ongoing_requests: int = Field(default=64, ge=1, description="Concurrent requests per replica")
    max_request_bytes: int = Field(
        default=1 << 30,
        ge=1 << 20,
        description="Largest request body taken (STOW-RS); a larger one declared is answered 413 before it is read",
    )
    max_instance_bytes: int = Field(
        default=1 << 30, ge=1 << 16, description="Largest single instance in a STOW-RS body; larger -> 413"
    )
    qido_limit: int = Field(default=1000, ge=1, description="Most matches a QIDO-RS query returns per page")
    audit_reads_every_s: float = Field(
        default=0.25, gt=0, le=10, description="Read requests are audited in batches this often (writes at once)"
    )

    @model_validator(mode="after")
    def _locked_by_default(self) -> ApiConfig:
        if self.tls is None and not self.allow_plaintext:
            raise ValueError("api.tls: missing; expected a certificate and key (or allow_plaintext: true on loopback)")
        if self.tls is None and not is_loopback(self.host):
            raise ValueError(f"api.host: got {self.host!r} without TLS; expected api.tls for a non-loopback bind")
        return self


class DicomwebDestinationConfig(_Model):
    """A DICOMweb server that receives our results by STOW-RS (instead of C-STORE)."""

    url: str = Field(description="Base URL of the DICOMweb service, e.g. https://pacs/dicom-web")
    token_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Env var holding a bearer token"
    )
    ca_certificates: str | None = Field(default=None, description="PEM CAs trusted for https (else the system's)")
    timeout_s: float = Field(default=60.0, gt=0, description="Connect and read timeout per request")
    allow_plaintext: bool = Field(default=False, description="Allow http:// (a test PACS on loopback)")

    @model_validator(mode="after")
    def _https(self) -> DicomwebDestinationConfig:
        if not self.url.startswith(("https://", "http://")):
            raise ValueError(f"pacs.dicomweb.url: got {self.url!r}; expected an https:// URL")
        if self.url.startswith("http://") and not self.allow_plaintext:
            raise ValueError(f"pacs.dicomweb.url: got {self.url!r}; expected https:// (or allow_plaintext: true)")
        return self
