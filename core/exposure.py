"""Locked by default (issue 13): which binds, endpoints and secrets a config may have.

Every network face of the bridge refuses the open setting unless the config asks for it by
name. A non-loopback bind needs TLS or an explicit ``allow_plaintext: true`` (logged loudly at
start); a FHIR endpoint is https; on a non-loopback bind the DICOM listener names its calling AE
titles and the HL7 listener its senders; with TLS every allowed calling AE title is bound to the
certificate subjects that may use it; model weights carry their sha256 in the config; and the
identifier hash key is the site's own. Only *demo mode* (every bind on loopback: nothing of
ours reachable from another machine) may leave the key out: it then gets a demo key, with a
warning.

Pure rules over a validated ``AppConfig``: ``exposure_problems`` (config errors, each naming
its field) and ``exposure_warnings`` (the loud lines logged at start). ``association_refusal``
is the runtime rule for one association (``actors.adapters.dimse``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from core.api_config import is_loopback

if TYPE_CHECKING:
    from core.config import AppConfig, ListenerConfig, ModelEntry

__all__ = ["association_refusal", "demo_mode", "exposure_problems", "exposure_warnings"]


def demo_mode(cfg: AppConfig) -> bool:
    """Whether nothing of ours is reachable from another machine: every bind is loopback.

    Only then may secrets fall back to demo values (the identifier hash key). A cluster's own
    traffic is Ray's, under its token and TLS (``ray``); its listeners bind the network and so
    are not demo mode.
    """
    if not is_loopback(cfg.listener.host):
        return False
    if cfg.hl7 is not None and not is_loopback(cfg.hl7.listener.host):
        return False
    return cfg.api is None or is_loopback(cfg.api.host)


def exposure_problems(cfg: AppConfig) -> list[str]:
    """Every way ``cfg`` leaves a door open that it did not ask for by name, one line each."""
    problems = _listener_problems(cfg.listener)
    if cfg.hl7 is not None:
        lst = cfg.hl7.listener
        problems += _plaintext_problem("hl7.listener", lst.host, lst.tls is not None, lst.allow_plaintext)
        if not cfg.hl7.senders and not is_loopback(lst.host):
            problems.append(
                f"hl7.senders: empty with hl7.listener.host={lst.host} (not loopback); expected the "
                "systems allowed to send (address or subject, application, facility)"
            )
        for i, sender in enumerate(cfg.hl7.senders):
            if sender.subject is not None and lst.tls is None:
                problems.append(
                    f"hl7.senders.{i}.subject: set without hl7.listener.tls; expected TLS with client certificates"
                )
    if cfg.ehr is not None and cfg.ehr.fhir.base_url.startswith("http://") and not cfg.ehr.fhir.allow_plaintext:
        problems.append(
            f"ehr.fhir.base_url: got {cfg.ehr.fhir.base_url!r}; expected https:// (a bearer token and "
            "PHI must not cross the network in clear; a loopback test server: ehr.fhir.allow_plaintext: true)"
        )
    if cfg.hash_key_env is None and not demo_mode(cfg):
        problems.append(
            "hash_key_env: missing; expected the environment variable holding the site's identifier "
            "hash key (only demo mode, every bind on loopback, may use the demo key)"
        )
    enc = cfg.storage.encryption
    if cfg.cluster is not None and enc.enabled and not (enc.key_file or enc.key_env):
        problems.append(
            "storage.encryption.key_file: missing on a cluster; expected the data keys every node "
            "reads (a demo key is per node, and the shared ledger's sealed columns need one key)"
        )
    problems += [
        f"{where}.sha256: missing; expected the weights' sha256 pinned in the config (a sidecar "
        "file may only confirm it; demo weights from `pacsai models train-demo`: demo: true)"
        for where, entry in _model_entries(cfg.models)
        if entry.sha256 is None and not entry.demo
    ]
    return problems


def _plaintext_problem(where: str, host: str, tls: bool, allow_plaintext: bool) -> list[str]:
    if tls or allow_plaintext or is_loopback(host):
        return []
    return [f"{where}.host={host} without {where}.tls: set {where}.tls or {where}.allow_plaintext: true"]


def _listener_problems(lst: ListenerConfig) -> list[str]:
    """The DICOM listener: TLS off loopback, a calling-AE allow-list, AE titles bound to subjects."""
    problems = _plaintext_problem("listener", lst.host, lst.tls is not None, lst.allow_plaintext)
    allowed = lst.allowed_calling_ae_titles
    if not allowed and not is_loopback(lst.host):
        problems.append(
            f"listener.allowed_calling_ae_titles: empty with listener.host={lst.host} (not loopback); "
            "expected the calling AE titles of the systems that send to us"
        )
    if lst.calling_ae_subjects and (lst.tls is None or not lst.tls.require_client_certificate):
        problems.append(
            "listener.calling_ae_subjects: set without listener.tls requiring client certificates; "
            "expected listener.tls with require_client_certificate: true"
        )
    problems += [
        f"listener.calling_ae_subjects.{ae}: not in listener.allowed_calling_ae_titles {list(allowed)}"
        for ae in lst.calling_ae_subjects
        if ae not in allowed
    ]
    if lst.tls is not None and lst.tls.require_client_certificate:
        problems += [
            f"listener.calling_ae_subjects.{ae}: missing; expected the certificate subject CN(s) "
            f"allowed to call as {ae} (listener.tls is on)"
            for ae in allowed
            if not lst.calling_ae_subjects.get(ae)
        ]
    return problems


def _model_entries(models: Mapping[str, ModelEntry]) -> Iterator[tuple[str, ModelEntry]]:
    for family, entry in models.items():
        yield f"models.{family}", entry
        for version, child in entry.versions.items():
            yield f"models.{family}.versions.{version}", child


def exposure_warnings(cfg: AppConfig) -> list[str]:
    """What a config asked for by name that leaves a door open: logged as warnings at start."""
    lines = []
    lst = cfg.listener
    if lst.tls is None and lst.allow_plaintext and not is_loopback(lst.host):
        lines.append(f"listener.allow_plaintext: DICOM in clear on {lst.host}:{lst.port} (PHI on the network)")
    if cfg.hl7 is not None:
        mllp = cfg.hl7.listener
        if mllp.tls is None and mllp.allow_plaintext and not is_loopback(mllp.host):
            lines.append(f"hl7.listener.allow_plaintext: HL7 in clear on {mllp.host}:{mllp.port} (PHI on the network)")
        if not cfg.hl7.senders:
            lines.append("hl7.senders: empty; any local process may send HL7 (demo mode only)")
    if cfg.ehr is not None and cfg.ehr.fhir.base_url.startswith("http://"):
        lines.append(f"ehr.fhir.allow_plaintext: reports (and any bearer token) to {cfg.ehr.fhir.base_url} in clear")
    if cfg.hash_key_env is None:
        lines.append("hash_key_env: unset; identifiers are hashed with the public demo key (demo mode only)")
    lines += [
        f"{where}: demo weights without a pinned sha256; the sidecar file is trusted"
        for where, entry in _model_entries(cfg.models)
        if entry.sha256 is None and entry.demo
    ]
    return lines


def association_refusal(calling_ae: str, subject: str | None, lst: ListenerConfig) -> str | None:
    """Why an association from ``calling_ae`` must be refused (A-ASSOCIATE-RJ), or ``None``.

    Args:
        calling_ae: The A-ASSOCIATE-RQ's calling AE title (trailing spaces stripped).
        subject: The peer certificate's subject CN; ``None`` on a connection without TLS.
        lst: The listener config.

    >>> from core.config import ListenerConfig
    >>> lst = ListenerConfig(allowed_calling_ae_titles=("CT1",), calling_ae_subjects={"CT1": ("ct1.example",)})
    >>> association_refusal("CT1", "ct1.example", lst) is None
    True
    >>> association_refusal("CT1", "mr1.example", lst)
    "calling AE title 'CT1' is not bound to certificate subject 'mr1.example'"
    """
    allowed = lst.allowed_calling_ae_titles
    if allowed and calling_ae not in allowed:
        return f"calling AE title {calling_ae!r} is not in listener.allowed_calling_ae_titles"
    if not lst.calling_ae_subjects:
        return None
    if subject not in lst.calling_ae_subjects.get(calling_ae, ()):
        return f"calling AE title {calling_ae!r} is not bound to certificate subject {subject!r}"
    return None
