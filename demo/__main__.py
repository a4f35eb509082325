"""``python -m demo``: run the end-to-end demo (``make demo``; see :mod:`demo.demo`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from actors.adapters.logs import LogSettings, install
from core.errors import ConfigError, PacsAIError
from demo.demo import run_demo

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m demo",
        description="Run the end-to-end demo.",
        epilog="Example:\n  python -m demo --config configs/demo.yaml --studies 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default="configs/demo.yaml", help="config YAML file (needs a pacs: section)")
    p.add_argument("--studies", type=int, default=3, help="how many synthetic studies to send")
    p.add_argument("-v", "--verbose", action="store_true", help="log INFO to the console (files always get it)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m demo``; returns the exit status (0: every study got its SR)."""
    install(LogSettings(directory=None))  # the console only, until the demo has its var dir
    args = _parser().parse_args(argv)
    try:
        return run_demo(Path(args.config), n_studies=args.studies, verbose=args.verbose)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except PacsAIError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
