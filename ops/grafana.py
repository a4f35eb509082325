"""Getting the dashboards into Grafana: over its HTTP API, or as a file-provisioning folder.

``provision`` pushes every dashboard of ``ops.dashboards`` with ``grafana-client`` into one
folder (found by title, else created), with ``overwrite``: running it again replaces the same
dashboards by uid, so it is idempotent. The API token comes from an environment variable whose
*name* the operator gives (``token_from_env``); no message here ever contains the token.

``export_provisioning`` writes the folder Grafana's file provisioning reads
(``deploy/grafana/provisioning`` in the repository, generated and committed):
``dashboards/<uid>.json``, ``dashboards/pacsai.yaml`` (the file provider) and
``datasources/prometheus.yaml``. Mount it at ``/etc/grafana/provisioning``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaUnauthorizedError

from core.errors import ConfigError, PacsAIError
from ops.dashboards import DASHBOARDS, DashboardSpec, dashboard_json

__all__ = [
    "DATASOURCE_UID",
    "FOLDER_TITLE",
    "ProvisionError",
    "Provisioned",
    "connect",
    "ensure_folder",
    "export_provisioning",
    "provision",
    "token_from_env",
]

logger = logging.getLogger(__name__)

FOLDER_TITLE = "PACS-AI"
"""The Grafana folder the dashboards go into unless ``--folder`` names another."""

DATASOURCE_UID = "pacsai-prometheus"
"""The provisioned Prometheus data source (the dashboards pick any via their variable)."""

PROVISIONING_MOUNT = "/etc/grafana/provisioning"
"""Where Grafana reads provisioning files; the file provider's path is under it."""


class ProvisionError(PacsAIError):
    """Grafana refused the dashboards or could not be reached.

    Args:
        url: The Grafana URL.
        reason: What happened and what was expected (never the token).
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url, self.reason = url, reason

    def __str__(self) -> str:
        return f"{self.url}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Provisioned:
    """What ``provision`` did: the folder and the dashboards' uids, in order."""

    folder_uid: str
    dashboard_uids: tuple[str, ...]


def token_from_env(variable: str, environ: Mapping[str, str] | None = None) -> str:
    """Read the Grafana API token from the environment variable named ``variable``.

    Raises:
        ConfigError: The variable is not set or empty (the message names it, never a value).
    """
    value = (os.environ if environ is None else environ).get(variable, "")
    if not value.strip():
        raise ConfigError(
            "--token-env",
            [f"{variable}: not set; expected a Grafana service-account token in this environment variable"],
        )
    return value.strip()


def connect(url: str, token: str, ca_file: Path | None = None, timeout_s: float = 10.0) -> GrafanaApi:
    """A grafana-client API object for ``url`` with a bearer token (TLS checked, with ``ca_file`` if given)."""
    api = GrafanaApi.from_url(url.rstrip("/"), credential=token, timeout=timeout_s)
    if ca_file is not None:
        api.client.verify = str(ca_file)
    return api


def _slug(title: str) -> str:
    return (re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "pacsai")[:40]


def ensure_folder(api: GrafanaApi, title: str) -> str:
    """Return the uid of the folder titled ``title``, creating it if there is none.

    Raises:
        GrafanaException: Grafana refused (mapped to ``ProvisionError`` by ``provision``).
    """
    for folder in api.folder.get_all_folders():
        if folder.get("title") == title:
            return str(folder["uid"])
    created = api.folder.create_folder(title, uid=_slug(title))
    logger.info("created Grafana folder %r (uid %s)", title, created["uid"])
    return str(created["uid"])


def _push(api: GrafanaApi, spec: DashboardSpec, folder_uid: str) -> None:
    body = {
        "dashboard": dashboard_json(spec),
        "folderUid": folder_uid,
        "overwrite": True,
        "message": "pacsai grafana provision",
    }
    api.dashboard.update_dashboard(body)


def provision(
    api: GrafanaApi, folder: str = FOLDER_TITLE, specs: tuple[DashboardSpec, ...] = DASHBOARDS
) -> Provisioned:
    """Push the dashboards into ``folder`` (created if missing), replacing them by uid.

    Args:
        api: From ``connect``.
        folder: The folder's title.
        specs: The dashboards (all five by default).

    Returns:
        The folder's uid and the dashboards' uids.

    Raises:
        ProvisionError: The token was refused (401), lacks rights (403), Grafana answered
            another error, or it could not be reached.
    """
    url = api.url or api.client.url
    try:
        folder_uid = ensure_folder(api, folder)
        for spec in specs:
            _push(api, spec, folder_uid)
    except GrafanaUnauthorizedError as exc:
        raise ProvisionError(
            url, "Grafana refused the token (401 Unauthorized); expected a valid service-account token"
        ) from exc
    except GrafanaClientError as exc:
        if exc.status_code == 403:
            reason = "the token may not write folders or dashboards (403 Forbidden); expected the Editor role"
        else:
            reason = f"Grafana refused the request ({exc.status_code}): {_message(exc.response)}"
        raise ProvisionError(url, reason) from exc
    except GrafanaException as exc:  # status 0: a timeout or transport error, wrapped by grafana-client
        what = f"Grafana failed ({exc.status_code})" if exc.status_code else "cannot reach Grafana"
        raise ProvisionError(url, f"{what}: {_message(exc.response) if exc.response else exc}") from exc
    except OSError as exc:  # requests' connection and TLS errors are OSErrors
        raise ProvisionError(url, f"cannot reach Grafana: {type(exc).__name__}: {exc}") from exc
    return Provisioned(folder_uid, tuple(spec.uid for spec in specs))


def _message(response: Any) -> str:
    if isinstance(response, dict) and "message" in response:
        return str(response["message"])
    return str(response)[:200]


# ---------------------------------------------------------------- file provisioning
def _provider(folder: str) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "pacsai",
                "orgId": 1,
                "folder": folder,
                "folderUid": _slug(folder),
                "type": "file",
                "disableDeletion": False,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {"path": f"{PROVISIONING_MOUNT}/dashboards", "foldersFromFilesStructure": False},
            }
        ],
    }


def _datasource() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": DATASOURCE_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": "http://localhost:9090",
                "isDefault": True,
                "jsonData": {"timeInterval": "15s"},
            }
        ],
    }


_GENERATED = "# Generated by `pacsai grafana export`; do not edit (ops/grafana.py writes it).\n"


def _yaml(header: str, data: dict[str, Any]) -> str:
    return _GENERATED + header + yaml.safe_dump(data, sort_keys=False)


def export_provisioning(directory: Path, folder: str = FOLDER_TITLE) -> list[Path]:
    """Write Grafana's file-provisioning folder: dashboards, their provider, the data source.

    Dashboard JSON files that no dashboard writes any more are removed, so the folder is exactly
    what the generator makes now.

    Args:
        directory: The provisioning root (mounted at ``/etc/grafana/provisioning``).
        folder: The Grafana folder the file provider puts the dashboards in.

    Returns:
        The files written, sorted.
    """
    files: dict[Path, str] = {
        directory / "dashboards" / f"{spec.uid}.json": json.dumps(dashboard_json(spec), indent=2, sort_keys=True) + "\n"
        for spec in DASHBOARDS
    }
    provider_note = f"# The dashboards' JSON lies next to this file; mount the folder at {PROVISIONING_MOUNT}.\n"
    files[directory / "dashboards" / "pacsai.yaml"] = _yaml(provider_note, _provider(folder))
    source_note = "# Point url at the Prometheus that scrapes Ray's metrics endpoints (metrics.export_port).\n"
    files[directory / "datasources" / "prometheus.yaml"] = _yaml(source_note, _datasource())
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for stale in (directory / "dashboards").glob("*.json"):
        if stale not in files:
            stale.unlink()
    return sorted(files)
