"""A scripted PACS for C-FIND: a real pynetdicom Query/Retrieve SCP whose matching is ours.

Orthanc matches Issuer of Patient ID as a key (a conforming PACS). Many PACS ignore it and
return every study of a Patient ID, whatever its issuer: this peer plays one, so the bridge
must notice the other issuer in the answer itself (issue 18).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

__all__ = ["IssuerBlindPacs"]

_STUDY_KEYS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
)
_SERIES_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "BodyPartExamined", "SeriesDescription")


def _answer(source: Dataset, keys: Sequence[str], level: str) -> Dataset:
    out = Dataset()
    out.QueryRetrieveLevel = level
    for key in keys:
        setattr(out, key, source.get(key, ""))
    return out


class IssuerBlindPacs:
    """Answers STUDY-level C-FIND by Patient ID only (the issuer key ignored) and SERIES level
    by Study Instance UID, from the headers of the studies it "holds"."""

    def __init__(self, studies: Sequence[Sequence[Dataset]], ae_title: str = "BLINDPACS") -> None:
        self.ae_title = ae_title
        self._instances = [ds for study in studies for ds in study]
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, self._find)])
        self.port = int(self._server.server_address[1])

    def _find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        level = str(query.QueryRetrieveLevel)
        if level == "STUDY":
            seen: dict[str, Dataset] = {}
            for ds in self._instances:
                if ds.PatientID == query.get("PatientID", ds.PatientID):
                    seen.setdefault(str(ds.StudyInstanceUID), _answer(ds, _STUDY_KEYS, level))
            matches = list(seen.values())
        elif level == "SERIES":
            by_series: dict[str, Dataset] = {}
            for ds in self._instances:
                if ds.StudyInstanceUID == query.get("StudyInstanceUID"):
                    by_series.setdefault(str(ds.SeriesInstanceUID), _answer(ds, _SERIES_KEYS, level))
            matches = list(by_series.values())
        else:
            matches = []
        for match in matches:
            yield 0xFF00, match
        yield 0x0000, None

    def stop(self) -> None:
        """Close the port."""
        self._server.shutdown()
