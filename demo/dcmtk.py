"""Run dcmtk command-line tools (the reference DICOM clients) with Nagle disabled."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

__all__ = ["PROPOSAL_OPTIONS", "dciodvfy", "storescu", "tool"]


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
            (``-R``) with the files' own transfer syntax (the matching ``-x`` option), so each
            file travels as it is stored. storescu proposes only uncompressed syntaxes unless
            told, and would decompress (or fail on) compressed files. Needs every file in one
            syntax that storescu can propose; otherwise storescu picks (and may transcode).
        timeout_s: Process timeout.
        extra: More storescu options.
    """
    args = [tool("storescu"), "-aet", calling_ae, "-aec", called_ae, *extra]
    if propose_own_syntax:
        args += ["-R", *_proposal_option(files)]
    args += [host, str(port), *[str(f) for f in files]]
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


PROPOSAL_OPTIONS = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}
"""storescu's proposal option for each transfer syntax it can propose (dcmtk 3.6.7)."""


def _proposal_option(files: Sequence[Path]) -> list[str]:
    """The ``-x`` option proposing the files' common transfer syntax, if storescu has one."""
    syntaxes = set()
    for f in files:
        try:
            syntaxes.add(str(read_file_meta_info(f).get("TransferSyntaxUID", "")))
        except (InvalidDicomError, OSError, ValueError, EOFError):
            return []  # not a Part 10 file with File Meta: let storescu decide
    if len(syntaxes) == 1 and (option := PROPOSAL_OPTIONS.get(syntaxes.pop())):
        return [option]
    return []


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run ``dciodvfy -new`` on a file; return ``(errors, warnings)`` lines."""
    proc = subprocess.run(
        [tool("dciodvfy"), "-new", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if "Error" in ln], [ln for ln in lines if "Warning" in ln]
