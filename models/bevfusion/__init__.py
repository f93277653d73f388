"""BEVFusion-style camera + LiDAR reference model calling the ``sparsefuse::*`` custom ops."""

from sparsefuse.models.bevfusion.lidar import SparseConv3d
from sparsefuse.models.bevfusion.model import (
    BOX_CHANNELS,
    DET_CLASSES,
    FEATURE_SITES,
    INPUT_NAMES,
    MODALITIES,
    OUTPUT_NAMES,
    SEG_CLASSES,
    BEVFusion,
    PrunableWeight,
    init_weights,
    modality_of,
    prunable_weights,
)

__all__ = [
    "BEVFusion", "BOX_CHANNELS", "DET_CLASSES", "FEATURE_SITES", "INPUT_NAMES", "MODALITIES", "OUTPUT_NAMES",
    "SEG_CLASSES", "PrunableWeight", "SparseConv3d", "init_weights", "modality_of", "prunable_weights",
]
