from __future__ import annotations

import pytest
import yaml

from core.config import AppConfig, parse_config
from core.errors import ConfigError

MODEL = {
    "name": "m",
    "version": "1",
    "weights": "w.pt",
    "demo": True,  # no sha256 pinned: demo weights (issue 13)
    "input": {"spatial_size": [64, 64]},
    "findings": [{"key": "nodule"}],
}


def test_empty_config_gives_embedded_defaults():
    cfg = parse_config(None)
    assert isinstance(cfg, AppConfig)
    assert cfg.listener.ae_title == "PACSAI"
    assert cfg.assembly.quiet_period_s == 2.0


@pytest.mark.parametrize("path", ["configs/default.yaml", "configs/demo.yaml", "configs/prod.example.yaml"])
def test_shipped_configs_are_valid(path):
    with open(path) as f:
        cfg = parse_config(yaml.safe_load(f), path)
    assert cfg.site_name


def test_every_bad_field_is_named_with_what_was_expected():
    raw = {
        "listener": {"ae_title": "X" * 17, "port": 70000, "typo": 1},
        "retry": {"max_attempts": 0},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "site.yaml")
    text = str(info.value)
    assert "site.yaml: 4 problem(s)" in text
    assert "listener.ae_title: got 'XXXXXXXXXXXXXXXXX'" in text
    assert "listener.port: got 70000; expected" in text
    assert "listener.typo: unknown field; expected one of" in text and "'ae_title'" in text
    assert "retry.max_attempts: got 0" in text


def test_routing_rule_must_name_a_registered_family():
    raw = {"models": {"chest_xray": MODEL}, "routing": {"rules": [{"name": "r", "family": "brain"}]}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert "routing.rules.0.family: got 'brain'; expected one of the model families ['chest_xray']" in str(info.value)


def test_bad_regex_and_bad_sha256_are_reported():
    model = dict(MODEL, sha256="not-a-hash")
    raw = {"models": {"x": model}, "routing": {"rules": [{"name": "r", "family": "x", "series_description": "(["}]}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    text = str(info.value)
    assert "models.x.sha256" in text
    assert "routing.rules.0.series_description" in text and "regular expression" in text


def test_replica_bounds_are_checked():
    model = dict(MODEL, serve={"min_replicas": 3, "max_replicas": 1})
    with pytest.raises(ConfigError, match="min_replicas"):
        parse_config({"models": {"x": model}})


def test_root_must_be_a_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_config(["a"])  # type: ignore[arg-type]


def test_config_is_frozen():
    cfg = parse_config(None)
    with pytest.raises(ValueError, match="frozen"):
        cfg.listener.port = 1  # type: ignore[misc]


def test_input_window_and_spacing_are_checked_against_the_network_size():
    good = dict(MODEL, input={"spatial_size": [32, 48, 48], "window": [40, 80], "spacing_mm": [5, 1, 1]})
    cfg = parse_config({"models": {"head": good}})
    assert cfg.models["head"].input.window == (40.0, 80.0) and cfg.models["head"].heatmaps is True
    bad = dict(MODEL, input={"spatial_size": [64, 64], "window": [40, 0], "spacing_mm": [1.0]})
    with pytest.raises(ConfigError) as info:
        parse_config({"models": {"head": bad}})
    assert "models.head.input" in str(info.value) and "window width 0.0 is not positive" in str(info.value)


def test_priors_and_per_sender_completion():
    cfg = parse_config(
        {
            "models": {"chest_xray": MODEL},
            "assembly": {
                "completion": "pacs_counts",
                "sources": {"CT_1": {"completion": "quiet_period", "quiet_period_s": 30}},
            },
            "priors": {"enabled": True, "compare_images": ["chest_xray"], "retrieve": "c-get"},
        }
    )
    assert cfg.assembly.sources["CT_1"].quiet_period_s == 30 and cfg.priors.retrieve == "c-get"
    assert parse_config(None).priors.enabled is False and parse_config(None).assembly.completion == "quiet_period"
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "models": {"chest_xray": MODEL},
                "priors": {"compare_images": ["brain"], "retrieve": "ftp"},
                "assembly": {"completion": "psychic", "sources": {"BAD\\AE": {"completion": "pacs_counts"}}},
            }
        )
    text = str(info.value)
    assert "priors.retrieve: got 'ftp'" in text and "assembly.completion: got 'psychic'" in text
    assert "assembly.sources.BAD\\AE" in text
    with pytest.raises(ConfigError, match=r"priors.compare_images.0: got 'brain'; expected one of the model families"):
        parse_config({"models": {"chest_xray": MODEL}, "priors": {"compare_images": ["brain"]}})


def test_identifier_logging_is_refused_naming_the_field():
    assert parse_config({"logging": {"log_identifiers": False}}).logging.log_identifiers is False
    with pytest.raises(ConfigError, match=r"logging.log_identifiers: .*patient identifiers"):
        parse_config({"logging": {"log_identifiers": True}})


def test_hl7_bridge_and_ehr_are_off_by_default_and_parse_when_set():
    """Issue #6: the embedded default needs no HL7 or FHIR peer."""
    assert parse_config(None).hl7 is None and parse_config(None).ehr is None
    cfg = parse_config(
        {
            "hl7": {
                "listener": {"port": 0},
                "accession_fields": ["ORC-3"],
                "identifier_systems": {"HOSP": "http://hosp.example/mrn"},
            },
            "ehr": {"fhir": {"base_url": "https://ehr.example/fhir", "token_env": "EHR_TOKEN"}},
        }
    )
    assert cfg.hl7.listener.port == 0 and cfg.hl7.accession_fields == ("ORC-3",)
    assert cfg.hl7.listener.max_message_bytes == 1 << 20
    assert cfg.ehr.fhir.base_url == "https://ehr.example/fhir"


def test_bad_hl7_and_ehr_fields_are_named():
    raw = {
        "hl7": {"listener": {"max_message_bytes": 10}, "accession_fields": ["PID-3"]},
        "ehr": {"fhir": {"base_url": "ftp://x"}},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "site.yaml")
    text = str(info.value)
    assert "hl7.listener.max_message_bytes: got 10" in text
    assert "hl7.accession_fields.0: got 'PID-3'" in text
    assert "ehr.fhir.base_url: got 'ftp://x'" in text


def test_cluster_example_is_valid_and_names_its_cells():
    with open("configs/cluster.example.yaml") as f:
        cfg = parse_config(yaml.safe_load(f), "configs/cluster.example.yaml")
    assert cfg.cluster is not None and cfg.cluster.cells == ("a", "b")
    assert cfg.models["chest_xray"].serve.num_gpus == 1


PG = {"storage": {"ledger": {"backend": "postgresql", "dsn_env": "PG_DSN"}}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"cluster": {"cells": ["a"]}}, "cluster: needs storage.ledger.backend postgresql"),
        ({**PG, "cluster": {"cells": ["A-1"]}}, "cluster.cells: got list; expected cell names ['A-1'] must match"),
        ({**PG, "cluster": {"cells": ["a", "a"]}}, "cell names repeat"),
        ({**PG, "cluster": {"cells": []}}, "cluster.cells: got list; expected tuple should have at least 1 item"),
        (
            {**PG, "cluster": {"cells": ["a"]}, "priors": {"enabled": True, "retrieve": "c-move"}},
            "cluster: needs priors.retrieve c-get",
        ),
        ({"storage": {"cell": "a"}}, "storage.cell: set per cell by the composition root"),
    ],
)
def test_cluster_config_errors_name_the_field(raw, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "site.yaml")
    assert expected in str(info.value)


def test_listeners_sharing_a_port_need_a_fixed_port():
    with pytest.raises(ConfigError) as info:
        parse_config({"listener": {"instances": 2, "port": 0}}, "site.yaml")
    assert "listener: got dict; expected instances 2 share one port: set a fixed port, not 0" in str(info.value)
    assert parse_config({"listener": {"instances": 2, "port": 11112}}).listener.instances == 2
