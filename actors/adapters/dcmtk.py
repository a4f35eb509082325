"""Run dcmtk command-line tools (the reference DICOM clients) with Nagle disabled."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["dciodvfy", "storescu", "tool"]


def tool(name: str) -> str:
    """Return the path of a dcmtk / dicom3tools executable.

    Raises:
        FileNotFoundError: It is not installed.
    """
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (Debian packages dcmtk / dicom3tools)")
    return path


def storescu(
    files: Sequence[Path],
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "STORESCU",
    *,
    propose_own_syntax: bool = False,
    timeout_s: float = 600.0,
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Send files with dcmtk ``storescu`` over one association.

    Args:
        files: DICOM files.
        host: Receiver host.
        port: Receiver port.
        called_ae: Receiver AE title.
        calling_ae: Our AE title.
        propose_own_syntax: Propose only the presentation contexts the files need
            (``-R``), so each file travels in the transfer syntax it is stored in.
        timeout_s: Process timeout.
        extra: More storescu options.
    """
    args = [tool("storescu"), "-aet", calling_ae, "-aec", called_ae, *extra]
    if propose_own_syntax:
        args.append("-R")
    args += [host, str(port), *[str(f) for f in files]]
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run ``dciodvfy -new`` on a file; return ``(errors, warnings)`` lines."""
    proc = subprocess.run(
        [tool("dciodvfy"), "-new", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if "Error" in ln], [ln for ln in lines if "Warning" in ln]
