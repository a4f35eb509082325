"""Demo training and the demo run as ``python -m training`` / ``python -m demo``, not ``pacsai``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import demo.__main__ as demo_main
import training.__main__ as training_main
from actors import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv", [["demo"], ["models", "train-demo"]])
def test_pacsai_has_no_demo_commands(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _config_with_weights(tmp_path: Path, families: tuple[str, ...]) -> tuple[Path, dict[str, Path]]:
    """The default config with every model's weights (and sidecar) already in ``tmp_path``."""
    raw = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    weights = {}
    for family in families:
        path = tmp_path / f"{family}.pt"
        path.write_bytes(b"not trained here")
        Path(f"{path}.sha256").write_text(f"{'0' * 64}  {path.name}\n")
        raw["models"][family]["weights"] = str(path)
        weights[family] = path
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config, weights


def test_training_skips_families_whose_weights_and_sidecar_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    families = tuple(sorted(yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())["models"]))
    config, weights = _config_with_weights(tmp_path, families)
    assert training_main.main(["--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{family}: {weights[family]} exists (use --force to retrain)" for family in families]


def test_training_refuses_a_family_the_config_does_not_have(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = _config_with_weights(tmp_path, ())
    assert training_main.main(["--config", str(config), "--family", "no_such_family"]) == 2
    assert "family: got 'no_such_family'" in capsys.readouterr().err


def test_demo_reports_a_bad_config_without_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo_main.main(["--config", str(tmp_path / "missing.yaml"), "--studies", "1"]) == 2
    assert "cannot read" in capsys.readouterr().err
