"""Issue 13, locked by default: every open door is a config error naming its field, unless the
config asks for it by name (then a warning); refusals at run time name their rule."""

from __future__ import annotations

from typing import Any

import pytest

from actors.config_file import hash_key
from core.config import AppConfig, Hl7Config, ListenerConfig, parse_config
from core.errors import ConfigError, MessageRejected
from core.exposure import association_refusal, demo_mode, exposure_warnings
from core.hl7 import MessageHeader
from core.hl7_checks import check_sender
from core.identifiers import DEMO_KEY

TLS = {"certificate": "c.pem", "private_key": "k.pem", "ca_certificates": "ca.pem"}
SHA = "b" * 64


def _text(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return str(info.value)


def _site(**over: Any) -> dict[str, Any]:
    """A locked-down site: every bind TLS, allow-lists and the hash key set."""
    raw: dict[str, Any] = {
        "hash_key_env": "SITE_KEY",
        "listener": {
            "host": "0.0.0.0",
            "tls": TLS,
            "allowed_calling_ae_titles": ["CT1"],
            "calling_ae_subjects": {"CT1": ["ct1.example"]},
        },
        "hl7": {
            "facility": "HOSP",
            "listener": {"host": "0.0.0.0", "tls": TLS},
            "senders": [{"subject": "ris.example", "application": "RIS", "facility": "HOSP"}],
        },
    }
    raw.update(over)
    return raw


def test_a_locked_down_site_parses_and_warns_of_nothing():
    cfg = parse_config(_site())
    assert not demo_mode(cfg) and exposure_warnings(cfg) == []


def test_the_embedded_defaults_are_demo_mode_with_loud_warnings():
    cfg = parse_config(None)
    assert demo_mode(cfg)
    assert any(line.startswith("hash_key_env: unset") for line in exposure_warnings(cfg))
    assert hash_key(cfg) == DEMO_KEY


@pytest.mark.parametrize("where", ["listener", "hl7.listener"])
def test_a_non_loopback_bind_without_tls_is_refused_naming_the_field(where):
    raw = _site()
    section = raw["listener"] if where == "listener" else raw["hl7"]["listener"]
    del section["tls"]
    if where == "listener":  # subjects need TLS: drop them to see the one problem alone
        del section["calling_ae_subjects"]
    else:
        raw["hl7"]["senders"] = [{"address": "10.0.0.0/8", "application": "RIS", "facility": "HOSP"}]
    text = _text(raw)
    assert f"{where}.host=0.0.0.0 without {where}.tls: set {where}.tls or {where}.allow_plaintext: true" in text
    section["allow_plaintext"] = True
    cfg = parse_config(raw)
    assert any(line.startswith(f"{where}.allow_plaintext: ") for line in exposure_warnings(cfg))


def test_a_non_loopback_listener_needs_its_calling_ae_titles():
    raw = _site()
    raw["listener"] = {"host": "10.1.2.3", "allow_plaintext": True}
    assert "listener.allowed_calling_ae_titles: empty with listener.host=10.1.2.3" in _text(raw)


def test_with_tls_every_calling_ae_title_is_bound_to_a_subject():
    raw = _site()
    raw["listener"]["allowed_calling_ae_titles"] = ["CT1", "MR1"]
    assert "listener.calling_ae_subjects.MR1: missing" in _text(raw)
    raw["listener"]["calling_ae_subjects"] = {"CT1": ["ct1.example"], "MR1": ["mr1"], "XA9": ["xa"]}
    assert "listener.calling_ae_subjects.XA9: not in listener.allowed_calling_ae_titles" in _text(raw)


def test_subjects_without_client_certificates_are_refused():
    raw = _site()
    raw["listener"]["tls"] = {**TLS, "require_client_certificate": False}
    assert "listener.calling_ae_subjects: set without listener.tls requiring client certificates" in _text(raw)


def test_hl7_on_the_network_needs_its_senders():
    raw = _site()
    raw["hl7"]["senders"] = []
    assert "hl7.senders: empty with hl7.listener.host=0.0.0.0" in _text(raw)


def test_an_hl7_sender_by_subject_needs_tls_and_a_sender_needs_an_identity():
    raw = _site()
    raw["hl7"]["listener"] = {"host": "127.0.0.1"}
    assert "hl7.senders.0.subject: set without hl7.listener.tls" in _text(raw)
    raw = _site()
    raw["hl7"]["senders"] = [{"application": "RIS", "facility": "HOSP"}]
    assert "hl7.senders.0: got" in _text(raw) and "address, subject: both unset" in _text(raw)


def test_fhir_must_be_https_unless_plaintext_is_asked_for():
    fhir = {"base_url": "http://127.0.0.1:8080/fhir", "token_env": "TOKEN"}
    raw = _site(ehr={"fhir": fhir})
    assert "ehr.fhir.base_url: got 'http://127.0.0.1:8080/fhir'; expected https://" in _text(raw)
    cfg = parse_config(_site(ehr={"fhir": {**fhir, "allow_plaintext": True}}))
    assert any(line.startswith("ehr.fhir.allow_plaintext: ") for line in exposure_warnings(cfg))
    parse_config(_site(ehr={"fhir": {**fhir, "base_url": "https://ehr.example/fhir"}}))


def test_outside_demo_mode_the_site_hash_key_is_required():
    raw = _site()
    del raw["hash_key_env"]
    assert "hash_key_env: missing; expected the environment variable" in _text(raw)
    api_only = {"api": {"host": "0.0.0.0", "tls": {"certificate": "c", "private_key": "k"}}}
    assert "hash_key_env: missing" in _text(api_only)
    cfg = AppConfig.model_validate(api_only)  # built around parse_config: still refused at start
    with pytest.raises(ConfigError, match="hash_key_env: missing"):
        hash_key(cfg)


def test_a_cluster_needs_one_data_key_file_for_every_node():
    pg = {"ledger": {"backend": "postgresql", "dsn_env": "PG_DSN"}}
    raw = _site(storage=pg, cluster={"cells": ["a"]})
    assert "storage.encryption.key_file: missing on a cluster" in _text(raw)
    parse_config(_site(storage={**pg, "encryption": {"key_file": "/etc/pacsai/keys.json"}}, cluster={"cells": ["a"]}))
    parse_config(_site(storage={**pg, "encryption": {"enabled": False}}, cluster={"cells": ["a"]}))


def test_model_sha256_is_pinned_in_the_config_unless_demo():
    model = {
        "name": "m",
        "version": "1",
        "weights": "w.pt",
        "input": {"spatial_size": [8, 8]},
        "findings": [{"key": "a"}],
    }
    raw = {"models": {"x": {**model, "sha256": SHA, "versions": {"2": {"weights": "w2.pt"}}}}}
    text = _text(raw)
    assert "models.x.versions.2.sha256: missing; expected the weights' sha256 pinned in the config" in text
    assert "models.x.sha256" not in text
    cfg = parse_config({"models": {"x": {**model, "demo": True}}})
    assert "models.x: demo weights without a pinned sha256; the sidecar file is trusted" in exposure_warnings(cfg)


def _listener(**kw: Any) -> ListenerConfig:
    return ListenerConfig(allowed_calling_ae_titles=("CT1", "MR1"), **kw)


def test_an_association_is_refused_unless_its_calling_ae_is_allowed_and_bound():
    open_list = _listener()
    assert association_refusal("CT1", None, open_list) is None
    assert "not in listener.allowed_calling_ae_titles" in (association_refusal("EVIL", None, open_list) or "")
    bound = _listener(calling_ae_subjects={"CT1": ("ct1.example",), "MR1": ("mr1.example",)})
    assert association_refusal("CT1", "ct1.example", bound) is None
    assert association_refusal("CT1", "mr1.example", bound) == (
        "calling AE title 'CT1' is not bound to certificate subject 'mr1.example'"
    )
    assert association_refusal("CT1", None, bound) is not None


def _msh(app="RIS", fac="HOSP", to_app="PACSAI", to_fac="HOSP") -> MessageHeader:
    return MessageHeader(app, fac, to_app, to_fac, "ADT", "A40", "ADT_A39", "C1", "P", "2.5")


HL7 = Hl7Config(
    facility="HOSP",
    senders=(
        {"address": "10.0.0.0/24", "application": "RIS", "facility": "HOSP"},
        {"subject": "adt.example", "application": "ADT", "facility": "HOSP"},
    ),
)


@pytest.mark.parametrize(
    ("header", "host", "subject", "location", "says"),
    [
        (_msh(), "10.9.9.9", None, "", "peer 10.9.9.9 (subject None): not in hl7.senders"),
        (_msh(app="ADT"), "10.0.0.7", None, "MSH^1^3", "MSH-3/MSH-4: got 'ADT'/'HOSP'"),
        (_msh(), "10.0.0.7", None, None, ""),
        (_msh(app="RIS^1.2.3^ISO"), "10.0.0.7", None, None, ""),
        (_msh(app="ADT"), "192.168.1.1", "adt.example", None, ""),
        (_msh(app="ADT"), "192.168.1.1", "ris.example", "", "not in hl7.senders"),
        (_msh(to_app="OTHER"), "10.0.0.7", None, "MSH^1^5", "MSH-5: got 'OTHER'; expected 'PACSAI'"),
        (_msh(to_fac="CLINIC"), "10.0.0.7", None, "MSH^1^6", "MSH-6: got 'CLINIC'; expected 'HOSP'"),
    ],
)
def test_only_an_allowed_sender_addressing_us_gets_through(header, host, subject, location, says):
    if location is None:
        check_sender(header, host, subject, HL7)
        return
    with pytest.raises(MessageRejected) as info:
        check_sender(header, host, subject, HL7)
    assert info.value.location == location and says in info.value.reason and info.value.error_code == "207"


def test_without_senders_anyone_on_loopback_may_send():
    check_sender(_msh(to_app="X", to_fac="Y"), "127.0.0.1", None, Hl7Config())
