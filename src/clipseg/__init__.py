"""clipseg: segment any image from a text prompt or an example image (CLIPSeg, Lüddecke & Ecker, CVPR 2022).

    import clipseg
    model = clipseg.load_model("CIDAS/clipseg-rd64-refined")
    predictor = clipseg.Predictor(model)
    predictor.set_image("kitchen.jpg")
    masks = predictor.predict(["a cup", "something to sit on"])
    support = clipseg.ImagePrompt("example.jpg", "example_mask.png")
    prediction = predictor.predict([support, clipseg.MixedPrompt("a cup", support, text_weight=0.5)])

Names are imported lazily so that `import clipseg` (and the CLI's --help) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "clipseg.checkpoints.load",
    "CLIPSeg": "clipseg.model.clipseg",
    "CLIPSegConfig": "clipseg.model.config",
    "CLIPTokenizer": "clipseg.tokenizer",
    "Predictor": "clipseg.predictor",
    "Prediction": "clipseg.predictor",
    "ImagePrompt": "clipseg.prompts",
    "MixedPrompt": "clipseg.prompts",
    "SegmentationModel": "clipseg.model.interface",
    "apply_precision": "clipseg.precision",
}
__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:
    from .checkpoints.load import load_model
    from .model.clipseg import CLIPSeg
    from .model.config import CLIPSegConfig
    from .model.interface import SegmentationModel
    from .precision import apply_precision
    from .predictor import Prediction, Predictor
    from .prompts import ImagePrompt, MixedPrompt
    from .tokenizer import CLIPTokenizer


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        if name == "CLIPSeg":
            import_module("clipseg.checkpoints")  # registers the layouts `CLIPSeg.save_pretrained` can write
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clipseg' has no attribute {name!r}")
