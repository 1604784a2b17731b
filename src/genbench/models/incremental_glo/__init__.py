"""Incremental GLO (Helman, Zingerman & Schreiber 2019): the model, its stage schedule and its settings."""

from genbench.models.incremental_glo.model import IncrementalGLO, continuity_noise
from genbench.models.incremental_glo.settings import Curriculum, EncoderFit, StageEpochs, StageLosses
from genbench.models.incremental_glo.stages import Stage, schedule, stage_at

__all__ = [
    "Curriculum",
    "EncoderFit",
    "IncrementalGLO",
    "Stage",
    "StageEpochs",
    "StageLosses",
    "continuity_noise",
    "schedule",
    "stage_at",
]
