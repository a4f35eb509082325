"""``python -m training``: train demo weights on synthetic phantoms, per family (``make weights``).

Each family of the config gets its weights file and ``.sha256`` sidecar at ``models.<family>.
weights``; a family whose weights and sidecar exist is skipped unless ``--force``. One line per
family says what was written and the held-out AUC of each finding, measured through the serving
predictor. On a terminal a progress bar per family shows the steps; elsewhere (CI logs) a plain
line at every quarter of the steps. Logs go to ``<storage.var_dir>/logs/training.log``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from actors.adapters.logs import LogSettings, install
from core.errors import ConfigError, PacsAIError
from training.training import train_demo

__all__ = ["main", "train_families"]

DEFAULT_CONFIG = "configs/default.yaml"


def train_families(args: argparse.Namespace) -> int:
    """Train the families asked for (all of the config's by default); print one line each.

    Args:
        args: ``config``, ``family``, ``steps`` (0: the family's default), ``seed`` and ``force``.

    Returns:
        0.

    Raises:
        ConfigError: The config is invalid or has no such family.
        ModelError: A family has no training recipe, or the training failed.
    """
    from actors.pipeline import load_config

    cfg = load_config(args.config)
    install(LogSettings.from_config(cfg.logging, cfg.storage, name="training", verbose=args.verbose))
    if args.family and args.family not in cfg.models:
        raise ConfigError(args.config, [f"family: got {args.family!r}; expected one of {sorted(cfg.models)}"])
    families = [args.family] if args.family else sorted(cfg.models)
    for family in families:
        entry = cfg.models[family]
        out = Path(entry.weights)
        if out.exists() and Path(f"{out}.sha256").exists() and not args.force:
            print(f"{family}: {out} exists (use --force to retrain)")
            continue
        with _progress(family) as progress:
            report = train_demo(
                family, entry, out, steps=args.steps or 0, seed=args.seed, log=lambda _m: None, progress=progress
            )
        aucs = ", ".join(f"{e.key} {e.auc:.3f}" for e in report.evaluation)
        print(f"{family}: wrote {out} ({report.steps} steps, {report.seconds:.0f} s); held-out AUC: {aucs}")
    return 0


@contextmanager
def _progress(family: str) -> Iterator[Callable[[int, int], None]]:
    """Show one family's steps: a bar on a terminal, else a plain line at each quarter."""
    console = Console()
    if not console.is_terminal:
        start = time.monotonic()

        def plain(step: int, steps: int) -> None:
            if step == 1 or 4 * step // steps > 4 * (step - 1) // steps:  # the first, then each quarter
                print(f"{family}: step {step}/{steps} ({time.monotonic() - start:.0f} s)", flush=True)

        yield plain
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(f"{family}: training", total=None)

        def update(step: int, steps: int) -> None:
            done = step == steps
            description = f"{family}: held-out evaluation" if done else f"{family}: training"
            bar.update(task, completed=step, total=steps, description=description)

        yield update


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="Train demo weights on synthetic phantoms.",
        epilog="Example:\n  python -m training --config configs/demo.yaml --family chest_xray --force",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config YAML file (its models: section)")
    p.add_argument("--family", help="only this family (default: every family of the config)")
    p.add_argument("--steps", type=int, default=0, help="0 = the family's default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="retrain even if the weights exist")
    p.add_argument("-v", "--verbose", action="store_true", help="log INFO to the console")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m training``; returns the exit status."""
    install(LogSettings(directory=None))  # the console only, until the config names the log dir
    args = _parser().parse_args(argv)
    try:
        return train_families(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except PacsAIError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
