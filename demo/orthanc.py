"""A local Orthanc process as the PACS, for the demo and the integration tests.

Each instance gets its own temporary config, storage and free ports, and runs with
``TCP_NODELAY=1`` (dcmtk, which Orthanc uses for DICOM, otherwise stalls ~44 ms per instance
against delayed ACK; see ``shared/reference/baselines.md``).

With ``dicomweb=True`` it loads Orthanc's DICOMweb plugin (Debian ``orthanc-dicomweb``):
QIDO-RS / WADO-RS / STOW-RS under ``dicomweb_url``, and STOW-RS *to* the servers named in
``dicomweb_servers`` (``stow_to``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "DICOMWEB_PLUGIN",
    "FORWARD_EACH_INSTANCE",
    "FORWARD_STABLE_STUDY",
    "OrthancProcess",
    "dicomweb_plugin",
    "free_port",
    "orthanc_binary",
    "wait_until_ready",
]

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
"""Where Debian's ``orthanc-dicomweb`` puts the plugin."""

FORWARD_EACH_INSTANCE = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  SendToModality(instanceId, '{modality}')
end
"""
"""The most common auto-routing rule: forward each instance to ``{modality}`` as it is stored
(``.format(modality=...)``). It forwards our own results back to us too, as such rules do."""

FORWARD_STABLE_STUDY = """
function OnStableStudy(studyId, tags, metadata)
  RestApiPost('/modalities/{modality}/store', studyId)
end
"""
"""Forward a whole study, over one association, once Orthanc calls it stable (``stable_age``
seconds of silence). (Lua's ``SendToModality`` takes instances only in Orthanc 1.10.)"""

logger = logging.getLogger(__name__)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """Return a TCP port that is free on localhost now, for a server to bind a moment later.

    Drawn from 12000-19999, below the kernel's ephemeral range (32768-60999 here) and below
    the ports ``demo.raycluster`` draws (20000 up): a port the kernel handed out with
    ``bind(0)`` is an ephemeral one, which any outgoing connection (Ray opens many) may take
    before the server binds it ("Address already in use", seen in CI). A port is not handed
    out twice by this process.
    """
    for _ in range(500):
        port = 12000 + secrets.randbelow(8000)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:  # that range is full: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float, log: Path) -> bool:
    """Poll ``url`` until it answers 200 (True) or ``timeout_s`` passes (False).

    Raises:
        RuntimeError: The process exited meanwhile (its log is named).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{Path(proc.args[0]).name} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


def orthanc_binary() -> str | None:
    """Return the Orthanc executable, if installed."""
    return shutil.which("Orthanc") or shutil.which("orthanc")


def dicomweb_plugin() -> Path | None:
    """Return Orthanc's DICOMweb plugin, if installed."""
    return DICOMWEB_PLUGIN if DICOMWEB_PLUGIN.is_file() else None


@dataclass
class OrthancProcess:
    """Start, stop and query a private Orthanc.

    Attributes:
        workdir: Holds config, storage and the log.
        aet: Orthanc's AE title.
        dicom_port: Its DIMSE port (free port if 0).
        http_port: Its REST port (free port if 0).
        modalities: ``{name: (aet, host, port)}`` Orthanc may C-MOVE / C-STORE to.
        lua: Lua scripts (their text) Orthanc runs, e.g. an auto-routing rule
            (``FORWARD_EACH_INSTANCE``, ``FORWARD_STABLE_STUDY``).
        stable_age: Seconds without a new instance before Orthanc calls a study stable
            (``OnStableStudy``).
        dicomweb: Load the DICOMweb plugin (its REST root is ``dicomweb_url``).
        dicomweb_servers: ``{name: url}`` or ``{name: {"Url": url, "HttpHeaders": {...}, ...}}``:
            the DICOMweb servers Orthanc may send to by STOW-RS (the plugin's ``Servers``;
            needs ``dicomweb``).
        options: More Orthanc configuration options (they override the defaults here).
    """

    workdir: Path
    aet: str = "ORTHANC"
    dicom_port: int = 0
    http_port: int = 0
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    lua: tuple[str, ...] = ()
    stable_age: int = 1
    dicomweb: bool = False
    dicomweb_servers: dict[str, str | dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.dicom_port = self.dicom_port or free_port()
        self.http_port = self.http_port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.dicomweb_servers and not self.dicomweb:
            raise ValueError("dicomweb_servers: got servers without dicomweb=True; expected the plugin loaded")

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Base URL of the DICOMweb service (QIDO-RS, WADO-RS, STOW-RS: ``.../studies``)."""
        return f"{self.url}/dicom-web"

    def _write_config(self) -> Path:
        config = {
            "Name": "pacsai-orthanc",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "DicomCheckCalledAet": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "Plugins": [],
            "UnknownSopClassAccepted": True,
            "SyncStorageArea": True,
            "StableAge": self.stable_age,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "HttpTimeout": 30,
            "LuaScripts": self._lua_files(),
            **self._dicomweb_config(),
            **self.options,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def _dicomweb_config(self) -> dict[str, Any]:
        """The plugin and its settings, when ``dicomweb`` is set.

        Raises:
            RuntimeError: The plugin is not installed.
        """
        if not self.dicomweb:
            return {}
        plugin = dicomweb_plugin()
        if plugin is None:
            raise RuntimeError(
                f"Orthanc's DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}; Debian 'orthanc-dicomweb')"
            )
        servers = {k: v if isinstance(v, dict) else {"Url": v} for k, v in self.dicomweb_servers.items()}
        return {
            "Plugins": [str(plugin)],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "Servers": servers,
            },
        }

    def _lua_files(self) -> list[str]:
        paths = []
        for n, text in enumerate(self.lua):
            path = self.workdir / f"script{n}.lua"
            path.write_text(text)
            paths.append(str(path))
        return paths

    def start(self, timeout_s: float = 30.0) -> OrthancProcess:
        """Start Orthanc and wait until its REST API answers.

        Raises:
            RuntimeError: Orthanc is not installed, exits, or does not answer in time.
        """
        binary = orthanc_binary()
        if binary is None:
            raise RuntimeError("Orthanc is not installed (Debian package 'orthanc')")
        config = self._write_config()
        log = (self.workdir / "orthanc.log").open("ab")
        env = dict(os.environ, TCP_NODELAY="1")
        self._proc = subprocess.Popen(
            [binary, str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        if not wait_until_ready(self._proc, f"{self.url}/system", timeout_s, self.workdir / "orthanc.log"):
            self.stop()
            raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout_s} s")
        return self

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL); its storage can be started again."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None

    def discard(self) -> None:
        """Kill a throwaway Orthanc at once (SIGKILL): what it stored is not wanted again.

        A graceful stop takes about 3.5 s on a 2-core machine (Orthanc joins its HTTP and
        background threads), paid by every test that starts a private PACS.
        """
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait(5)
        self._proc = None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ REST
    def find(self, level: str, query: dict[str, str]) -> list[dict[str, Any]]:
        """``/tools/find`` with ``Expand``: matching resources at ``level``."""
        r = httpx.post(f"{self.url}/tools/find", json={"Level": level, "Query": query, "Expand": True}, timeout=30)
        r.raise_for_status()
        return list(r.json())

    def instances_of_study(self, study_uid: str, modality: str | None = None) -> list[dict[str, Any]]:
        """Instances (expanded, with ``MainDicomTags``) of one study, optionally one modality."""
        out = []
        for series in self.find("Series", {"StudyInstanceUID": study_uid}):
            if modality and series["MainDicomTags"].get("Modality") != modality:
                continue
            for iid in series["Instances"]:
                r = httpx.get(f"{self.url}/instances/{iid}", timeout=30)
                r.raise_for_status()
                out.append(r.json())
        return out

    def file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file of an instance."""
        r = httpx.get(f"{self.url}/instances/{orthanc_id}/file", timeout=60)
        r.raise_for_status()
        return r.content

    def stow_to(self, server: str, resource_ids: list[str]) -> httpx.Response:
        """Have Orthanc send resources to one of ``dicomweb_servers`` by STOW-RS, and wait.

        ``POST /dicom-web/servers/{server}/stow`` with ``{"Resources": [...], "Synchronous":
        true}``: Orthanc answers once its STOW-RS request is done (2xx), or with its error
        (e.g. 500 when the server refused the instances or cannot be reached).

        Args:
            server: A name in ``dicomweb_servers``.
            resource_ids: Orthanc IDs of patients, studies, series or instances.

        Returns:
            Orthanc's answer, as it came (not raised for its status).
        """
        return httpx.post(
            f"{self.dicomweb_url}/servers/{server}/stow",
            json={"Resources": list(resource_ids), "Synchronous": True},
            timeout=120,
        )

    def statistics(self) -> dict[str, Any]:
        """``/statistics``: counts of stored resources."""
        r = httpx.get(f"{self.url}/statistics", timeout=10)
        r.raise_for_status()
        return dict(r.json())
