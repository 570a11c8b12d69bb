"""The vision companion: supervised transfer from a hub of image experts on the Hub-Pathway routing core.

``HubPathwayClassifier(hub, num_classes, k=2)`` is an ``nn.Module`` with the timm-style surface
(``forward_features``, ``forward_head``, ``num_features``); ``python -m hp_rl.vision.train`` and
``python -m hp_rl.vision.evaluate`` train and evaluate it with run folders.
"""

from hp_rl.vision.classifier import (
    ClassifierLosses,
    ClassifierOutput,
    ExpertInputError,
    ExpertLogits,
    HubPathwayClassifier,
)
from hp_rl.vision.data import (
    AugmentConfig,
    DataError,
    ImageData,
    ImageDataset,
    from_arrays,
    load_builtin,
    load_data,
    load_image_folder,
    load_npz,
    make_loader,
)

__all__ = [
    "AugmentConfig",
    "ClassifierLosses",
    "ClassifierOutput",
    "DataError",
    "ExpertInputError",
    "ExpertLogits",
    "HubPathwayClassifier",
    "ImageData",
    "ImageDataset",
    "from_arrays",
    "load_builtin",
    "load_data",
    "load_image_folder",
    "load_npz",
    "make_loader",
]
