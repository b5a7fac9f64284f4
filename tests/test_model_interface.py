"""`SegmentationModel`: CLIPSeg, the baselines and OnnxModel offer every member with the protocol's parameters, and
both backends apply one pairing rule in `decode`."""

from __future__ import annotations

import inspect

import pytest
import torch

import clipseg
from clipseg.model.baselines import CLIPDeconv, ViTSeg
from clipseg.model.config import CLIPSegConfig
from clipseg.model.interface import SegmentationModel, check_pairing
from clipseg.predictor import Predictor
from clipseg.testing import random_model, tiny_config

# Written out, not read from the protocol: what Predictor and the evaluation call.
METHODS = ("eval", "extract_features", "encode_text", "encode_image", "decode")
PROPERTIES = ("tokenizer", "device", "dtype")


def parameters(function) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def assert_satisfies(model: object) -> None:
    assert isinstance(model, SegmentationModel)
    assert isinstance(model.config, CLIPSegConfig)
    for name in METHODS:
        assert parameters(getattr(type(model), name)) == parameters(getattr(SegmentationModel, name)), name
    for name in PROPERTIES:
        getattr(model, name)  # a property or an attribute, readable
    assert model.eval() is model


@pytest.mark.parametrize(
    "build",
    [
        lambda: random_model(),
        lambda: CLIPDeconv(tiny_config().replace(extract_layers=(2,)), reduce2_dim=8),
        lambda: ViTSeg(tiny_config()),
    ],
    ids=["CLIPSeg", "CLIPDeconv", "ViTSeg"],
)
def test_pytorch_models_satisfy_the_protocol(build):
    assert_satisfies(build())


def test_onnx_model_satisfies_the_protocol(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from clipseg.export.onnx import export_onnx_model
    from clipseg.export.runtime import OnnxModel

    assert_satisfies(OnnxModel(export_onnx_model(random_model(), tmp_path, image_size=32)))


def test_a_class_missing_a_member_does_not_satisfy_it():
    class TextOnly:
        config = tiny_config()
        tokenizer = device = dtype = None

        def encode_text(self, token_ids):
            return token_ids

    assert not isinstance(TextOnly(), SegmentationModel)


def test_public_names():
    assert clipseg.SegmentationModel is SegmentationModel
    assert clipseg.Predictor is Predictor
    from clipseg.precision import apply_precision
    from clipseg.predictor import Prediction
    from clipseg.prompts import ImagePrompt, MixedPrompt

    assert (clipseg.ImagePrompt, clipseg.MixedPrompt, clipseg.Prediction, clipseg.apply_precision) == (
        ImagePrompt,
        MixedPrompt,
        Prediction,
        apply_precision,
    )


def test_pairing_rule():
    check_pairing(1, 5, None)  # every prompt reads the single image
    check_pairing(3, 3, None)  # one prompt per image
    check_pairing(2, 4, torch.tensor([1, 0, 0, 1]))
    check_pairing(2, 0, torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="2 images and 3 conditional vectors: pass image_index"):
        check_pairing(2, 3, None)
    for bad in (torch.tensor([0, 2, 1]), torch.tensor([0, -1, 1]), torch.tensor([0, 1])):
        with pytest.raises(ValueError, match=r"image_index must hold 3 indices in \[0, 2\)"):
            check_pairing(2, 3, bad)


def test_clipseg_decode_applies_the_pairing_rule():
    model = random_model().eval()
    with torch.inference_mode():
        features = model.extract_features(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        conditional = torch.randn(3, model.config.vision.output_dim, generator=torch.Generator().manual_seed(1))
        with pytest.raises(ValueError, match="pass image_index"):
            model.decode(features, conditional, output_size=(32, 32))
        with pytest.raises(ValueError, match="image_index must hold"):
            model.decode(features, conditional, output_size=(32, 32), image_index=torch.tensor([0, 2, 1]))
        paired = model.decode(features, conditional, output_size=(32, 32), image_index=torch.tensor([1, 0, 1]))
        alone = model.decode([f[1:] for f in features], conditional[:1], output_size=(32, 32))
    assert paired.shape == (3, 1, 32, 32)
    torch.testing.assert_close(paired[0], alone[0])  # prompt 0 read image 1
