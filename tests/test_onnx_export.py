"""ONNX export and the onnxruntime backend: same outputs as PyTorch (<= 1e-4), dynamic batch and prompt count."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

import clipseg
from clipseg.testing import random_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from clipseg.export.onnx import GRAPHS, export_onnx_model
from clipseg.export.runtime import OnnxModel

SIDE = 64  # export size: a 4x4 patch grid keeps the graphs small
PROMPTS = ["a cup", "something to sit on", "the red circle on the left of the picture"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    model = random_model()
    directory = export_onnx_model(model, tmp_path_factory.mktemp("onnx"), image_size=SIDE)
    return model, OnnxModel(directory)


def test_export_writes_every_graph_and_config(models):
    _, onnx_model = models
    for name in GRAPHS:
        assert (onnx_model.directory / f"{name}.onnx").is_file()
    assert onnx_model.config.image_size == SIDE
    assert onnx_model.tokenizer(PROMPTS).ids.tolist() == clipseg.testing.random_model().tokenizer(PROMPTS).ids.tolist()


@pytest.mark.parametrize("images", [1, 3])
def test_features_and_image_embedding_match_pytorch(models, images):
    model, onnx_model = models
    pixels = torch.randn(images, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(images))
    with torch.inference_mode():
        expected, embedding = model.extract_features(pixels), model.encode_image(pixels)
    got = onnx_model.extract_features(pixels)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    torch.testing.assert_close(onnx_model.encode_image(pixels), embedding, atol=1e-4, rtol=0)


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS])
def test_text_encoder_matches_pytorch_at_any_count_and_length(models, prompts):
    model, onnx_model = models
    ids = model.tokenizer(prompts).ids  # padded to 77: the runtime trims to the real length as PyTorch does
    with torch.inference_mode():
        expected = model.encode_text(ids)
    torch.testing.assert_close(onnx_model.encode_text(ids), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(onnx_model.encode_text(ids[:, :20]), expected, atol=1e-5, rtol=0)


def test_decoder_matches_pytorch_with_pairing_and_broadcast(models):
    model, onnx_model = models
    pixels = torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(7))
    conditional = torch.randn(5, model.config.vision.output_dim, generator=torch.Generator().manual_seed(8))
    index = torch.tensor([1, 0, 0, 1, 1])
    with torch.inference_mode():
        features = model.extract_features(pixels)
        paired = model.decode(features, conditional, output_size=(SIDE, SIDE), image_index=index)
        broadcast = model.decode([f[:1] for f in features], conditional, output_size=(SIDE, SIDE))
    onnx_features = onnx_model.extract_features(pixels)
    got = onnx_model.decode(onnx_features, conditional, output_size=(SIDE, SIDE), image_index=index)
    assert got.shape == (5, 1, SIDE, SIDE)
    torch.testing.assert_close(got, paired, atol=1e-4, rtol=0)
    got = onnx_model.decode([f[:1] for f in onnx_features], conditional, output_size=(SIDE, SIDE))
    torch.testing.assert_close(got, broadcast, atol=1e-4, rtol=0)
    assert paired.std() > 1e-2  # the comparison means something only if logits vary


def test_predictor_runs_on_the_onnx_backend(models):
    model, onnx_model = models
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8))
    predictions = []
    for backend in (model, onnx_model):
        predictor = clipseg.Predictor(backend, image_size=SIDE)  # the ONNX model's config says SIDE already
        predictor.set_image(image)
        predictions.append(predictor.predict(PROMPTS).probabilities)
    assert predictions[1].shape == (len(PROMPTS), 50, 70)
    torch.testing.assert_close(predictions[1], predictions[0], atol=1e-4, rtol=0)


def test_runtime_rejects_what_the_graphs_cannot_do(models, tmp_path):
    _, onnx_model = models
    with pytest.raises(ValueError, match="for this ONNX export"):
        onnx_model.extract_features(torch.randn(1, 3, SIDE + 16, SIDE))
    with pytest.raises(ValueError, match="token_mask"):
        onnx_model.encode_image(torch.randn(1, 3, SIDE, SIDE), token_mask=torch.ones(1, SIDE, SIDE))
    features = onnx_model.extract_features(torch.randn(2, 3, SIDE, SIDE))
    conditional = torch.randn(3, onnx_model.config.vision.output_dim)
    with pytest.raises(ValueError, match="pass image_index"):
        onnx_model.decode(features, conditional, output_size=(SIDE, SIDE))
    with pytest.raises(ValueError, match="image_index must hold"):
        onnx_model.decode(features, conditional, output_size=(SIDE, SIDE), image_index=torch.tensor([0, 2, 1]))
    with pytest.raises(FileNotFoundError, match="not a clipseg ONNX export"):
        OnnxModel(tmp_path)


def test_a_model_packed_for_cpu_inference_exports_the_same_graphs(models, tmp_path):
    from clipseg.precision import apply_precision

    model, onnx_model = models
    packed = OnnxModel(export_onnx_model(apply_precision(random_model(), "fp32"), tmp_path, image_size=SIDE))
    pixels = torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))
    for a, b in zip(packed.extract_features(pixels), onnx_model.extract_features(pixels)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_int8_model_is_refused():
    from clipseg.precision import quantize_dynamic

    with pytest.raises(ValueError, match="float model"):
        export_onnx_model(quantize_dynamic(random_model()), "unused")


def test_cli_exports_and_checks(tmp_path):
    from typer.testing import CliRunner

    from clipseg.cli import app

    random_model().save_pretrained(tmp_path / "model")
    result = CliRunner().invoke(
        app, ["export-onnx", str(tmp_path / "model"), str(tmp_path / "onnx"), "--image-size", str(SIDE)]
    )
    assert result.exit_code == 0, result.output
    reported = re.search(r"max \|Δ logits\| ([0-9.e+-]+)", result.output)
    assert reported is not None and float(reported.group(1)) < 1e-3  # the check ran and the graphs agree
    assert OnnxModel(tmp_path / "onnx").config.image_size == SIDE
    result = CliRunner().invoke(app, ["export-onnx", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert result.exit_code != 0 and "no such file" in result.output


def test_cli_segments_with_the_onnx_backend_as_with_torch(tmp_path):
    from typer.testing import CliRunner

    from clipseg.cli import app

    runner = CliRunner()
    random_model().save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    export = runner.invoke(app, ["export-onnx", str(tmp_path / "model"), str(tmp_path / "onnx")])
    assert export.exit_code == 0, export.output

    def segment(model: str, *options: str):
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        args = ["segment", str(tmp_path / "photo.png"), "-p", "a cup", "-p", "a chair", "-f", "soft"]
        result = runner.invoke(app, [*args, "-o", str(out), "--model", str(tmp_path / model), *options])
        return result, {p.name: np.asarray(Image.open(p), dtype=int) for p in sorted(out.glob("*.png"))}

    torch_result, torch_masks = segment("model", "--device", "cpu")
    onnx_result, onnx_masks = segment("onnx", "--backend", "onnx")
    assert torch_result.exit_code == 0 and onnx_result.exit_code == 0, onnx_result.output
    assert sorted(onnx_masks) == sorted(torch_masks) and len(onnx_masks) == 2
    for name, mask in onnx_masks.items():
        assert mask.shape == (90, 120)
        assert np.abs(mask - torch_masks[name]).max() <= 1  # 8-bit probabilities, outputs <= 1e-4 apart
        assert mask.std() > 0

    for model, options, message in [
        ("model", ["--backend", "onnx"], "clipseg export-onnx"),
        ("onnx", [], "--backend onnx"),
        ("onnx", ["--backend", "onnx", "--precision", "int8"], "fp32 graphs"),
        ("onnx", ["--backend", "onnx", "--extract-layers", "1,2,3"], "fixed when a model is exported"),
    ]:
        result, _ = segment(model, *options)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
