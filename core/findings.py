"""Coded concepts for every finding our models report.

Codes marked SCT were checked against pydicom's PS3.16 concept dictionary (pydicom 3.0.2,
``pydicom.sr._concepts_dict``). Where PS3.16 has no concept we could verify, the finding uses
our private coding scheme ``99PACSAI`` (PS3.3 8.2: a "99" prefix marks a local scheme), so that
no code is guessed. A site maps them to its own terminology in the model registry.
"""

from __future__ import annotations

from core.types import CodedTerm

__all__ = ["CATALOGUE", "LOCAL_SCHEME", "term_for"]

LOCAL_SCHEME = "99PACSAI"
"""Coding Scheme Designator of our local codes."""


def _local(value: str, meaning: str) -> CodedTerm:
    return CodedTerm(value, LOCAL_SCHEME, meaning)


CATALOGUE: dict[str, CodedTerm] = {
    # Chest X-ray: the 18 labels of the common public chest X-ray label set.
    "atelectasis": _local("CXR001", "Atelectasis"),
    "consolidation": _local("CXR002", "Consolidation"),
    "infiltration": _local("CXR003", "Infiltration"),
    "pneumothorax": CodedTerm("36118008", "SCT", "Pneumothorax"),
    "edema": CodedTerm("79654002", "SCT", "Edema"),
    "emphysema": _local("CXR006", "Emphysema"),
    "fibrosis": CodedTerm("112674009", "SCT", "Fibrosis"),
    "effusion": CodedTerm("60046008", "SCT", "Pleural effusion"),
    "pneumonia": _local("CXR009", "Pneumonia"),
    "pleural_thickening": _local("CXR010", "Pleural thickening"),
    "cardiomegaly": CodedTerm("287272002", "SCT", "Cardiomegaly"),
    "nodule": CodedTerm("27925004", "SCT", "Nodule"),
    "mass": CodedTerm("4147007", "SCT", "Mass"),
    "hernia": _local("CXR014", "Hernia"),
    "lung_lesion": CodedTerm("308689002", "SCT", "Coin lesion of lung"),
    "fracture": CodedTerm("125605004", "SCT", "Fracture of bone"),
    "lung_opacity": _local("CXR017", "Lung opacity"),
    "enlarged_cardiomediastinum": _local("CXR018", "Enlarged cardiomediastinum"),
    "tension_pneumothorax": _local("CXR019", "Tension pneumothorax"),
    # Bone fracture (limb radiographs).
    "limb_fracture": CodedTerm("125605004", "SCT", "Fracture of bone"),
    # Brain MRI tumour.
    "brain_tumour": CodedTerm("108369006", "SCT", "Neoplasm"),
    # Chest CT angiography.
    "aortic_dissection": CodedTerm("308546005", "SCT", "Aortic dissection"),
    # Head CT haemorrhage and its subtypes.
    "any_haemorrhage": CodedTerm("1386000", "SCT", "Intracranial hemorrhage"),
    "epidural": _local("ICH001", "Epidural hemorrhage"),
    "subdural": _local("ICH002", "Subdural hemorrhage"),
    "subarachnoid": _local("ICH003", "Subarachnoid hemorrhage"),
    "intraparenchymal": _local("ICH004", "Intraparenchymal hemorrhage"),
    "intraventricular": _local("ICH005", "Intraventricular hemorrhage"),
    "traumatic": _local("ICH006", "Traumatic intracranial hemorrhage"),
    # Image-quality flags for technologists (measured, not predicted by a network).
    "motion_artefact": CodedTerm("128553", "DCM", "Patient motion"),
    "incomplete_series": _local("QC001", "Incomplete series"),
}
"""Finding key -> coded concept."""


def term_for(key: str) -> CodedTerm:
    """Return the coded concept of a finding key.

    Unknown keys get a local code named after the key, so a new model output is never dropped
    for want of a code.

    >>> term_for("pneumothorax").scheme
    'SCT'
    >>> term_for("something_new").meaning
    'Something new'
    """
    known = CATALOGUE.get(key)
    if known is not None:
        return known
    return _local(key.upper()[:16], key.replace("_", " ").capitalize())
