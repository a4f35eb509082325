"""The model families: which predictor serves each (networks are in :mod:`models.networks`).

Adding a family: a network builder and Grad-CAM layer in ``networks``, a predictor class here
(usually a two-line subclass of a radiograph, slice or volume predictor), a training recipe in
:mod:`training.recipes`, and a registry entry plus routing rule in the config.
"""

from __future__ import annotations

import logging

from core.config import ModelEntry
from core.errors import ModelError
from models.predictor import BoneFracturePredictor, ChestXrayPredictor, Predictor
from models.volume_predictor import BrainTumourPredictor, ChestCtaPredictor, HeadCtPredictor

__all__ = ["PREDICTORS", "load_predictor"]

logger = logging.getLogger(__name__)

PREDICTORS: dict[str, type[Predictor]] = {
    "bone_fracture": BoneFracturePredictor,
    "brain_mri_tumour": BrainTumourPredictor,
    "chest_cta": ChestCtaPredictor,
    "chest_xray": ChestXrayPredictor,
    "head_ct_haemorrhage": HeadCtPredictor,
}
"""Family key -> predictor class."""


def load_predictor(family: str, entry: ModelEntry) -> Predictor:
    """Check and load the weights of a family's registry entry into its predictor.

    Args:
        family: Model family key.
        entry: Its registry entry.

    Returns:
        The predictor.

    Raises:
        ModelError: If no predictor exists for ``family``.
        ModelWeightsError: If the weights are missing, mismatched or do not fit.
    """
    predictor = PREDICTORS.get(family)
    if predictor is None:
        raise ModelError(f'Got model family "{family}"; expected one of {sorted(PREDICTORS)}')
    return predictor.load(entry, family)
