"""STOW-RS to the PACS's DICOMweb service: the delivery stage's other way to store results.

``DicomwebPacsClient.store`` keeps the contract of ``DimsePacsClient.store``: one
``StoreOutcome`` per data set, in order, and ``DependencyUnavailable`` when the server cannot be
reached, so the delivery stage waits an outage out without spending retries. What an answer
means:

- no connection, TLS failure, a timeout, 408, 429 or 5xx: ``DependencyUnavailable`` (the
  objects stay pending in the outbox);
- any other status: per instance, as ``core.stow_receipts`` reads the response data set
  (PS3.18 10.5.3): stored only if listed in its ``ReferencedSOPSequence`` under 200 or 202;
  a 4xx (400, 401, 403, 409, 413, 415) is a refusal, and the stage spends a retry on it.

One request carries all the data sets (``POST {url}/studies``, multipart/related;
type="application/dicom"; dicomweb-client does the encoding). The bearer token is read once,
from the environment variable ``token_env`` names; it is sent only in the Authorization header
and never logged. ``requests`` takes nothing from the environment (``trust_env`` is off: no
``REQUESTS_CA_BUNDLE`` replacing ``ca_certificates``, no ``.netrc`` replacing the token, no
proxy). dicomweb-client's own retries are off: the delivery stage owns retrying.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from actors.adapters.dimse import StoreOutcome
from core.api_config import DicomwebDestinationConfig
from core.errors import ConfigError, DependencyUnavailable
from core.stow_receipts import peer_unavailable, read_stow_response, stow_receipts

__all__ = ["DicomwebPacsClient"]

logger = logging.getLogger(__name__)

_ACCEPT = "application/dicom+json"


class DicomwebPacsClient:
    """STOW-RS client towards the PACS (one ``requests`` session per calling thread)."""

    def __init__(self, cfg: DicomwebDestinationConfig) -> None:
        """Args:
            cfg: The PACS's DICOMweb service (``pacs.dicomweb``).

        Raises:
            ConfigError: ``token_env`` names an environment variable that is not set.
        """
        self._cfg = cfg
        self._url = cfg.url.rstrip("/")
        self._token: str | None = None
        if cfg.token_env:
            self._token = os.environ.get(cfg.token_env)
            if not self._token:
                raise ConfigError(
                    "environment", [f"{cfg.token_env}: not set; expected the DICOMweb bearer token (pacs.dicomweb)"]
                )
        self._local = threading.local()

    def store(self, datasets: Sequence[Dataset]) -> list[StoreOutcome]:
        """Store data sets with one STOW-RS request.

        Returns:
            One outcome per data set, in order: ``0x0000`` / ``0xBxxx`` when the server lists it
            as stored, a failure status otherwise (``core.stow_receipts``).

        Raises:
            DependencyUnavailable: The server cannot be reached, timed out, or answered 408,
                429 or 5xx.
        """
        if not datasets:
            return []
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        response = self._post(datasets)
        status = response.status_code
        if peer_unavailable(status):
            raise DependencyUnavailable("pacs", f"HTTP {status} from {self._url}/studies (STOW-RS)")
        receipts = stow_receipts(uids, status, read_stow_response(response.content))
        for receipt in receipts:
            if receipt.status:  # a warning or a failure
                logger.warning("STOW-RS %s: 0x%04X, %s", receipt.sop_instance_uid, receipt.status, receipt.detail)
        return [StoreOutcome(r.sop_instance_uid, r.status) for r in receipts]

    def _post(self, datasets: Sequence[Dataset]) -> requests.Response:
        """Send the request; return the server's final answer, whatever its status.

        Raises:
            DependencyUnavailable: No answer (connection refused, TLS failure, timeout).
        """
        client = self._client()
        answers: list[requests.Response] = self._local.answers
        answers.clear()
        try:
            client.store_instances(list(datasets))
        except requests.HTTPError:
            pass  # a 4xx/5xx answer: read below, from the response kept by the hook
        except requests.RequestException as exc:
            raise DependencyUnavailable("pacs", f"STOW-RS to {self._url}: {type(exc).__name__}: {exc}") from exc
        except (ValueError, KeyError, SyntaxError):
            # dicomweb-client could not read a 2xx body (media type, JSON or XML); we read it
            # ourselves below. Without an answer, the failure was ours: raise it.
            if not answers:
                raise
        return answers[-1]

    def _client(self) -> DICOMwebClient:
        """This thread's client and session (``requests.Session`` is not thread-safe)."""
        client: DICOMwebClient | None = getattr(self._local, "client", None)
        if client is None:
            session = requests.Session()
            session.trust_env = False
            session.verify = self._cfg.ca_certificates or True
            session.headers["Accept"] = _ACCEPT
            if self._token:
                session.headers["Authorization"] = f"Bearer {self._token}"
            answers: list[requests.Response] = []
            session.hooks["response"].append(lambda r, *_a, **_k: answers.append(r))
            client = DICOMwebClient(self._url, session=session, timeout=self._cfg.timeout_s)
            client.set_http_retry_params(retry=False)
            self._local.client, self._local.answers = client, answers
        return client
