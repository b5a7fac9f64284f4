"""Parity with transformers' CLIPSegForImageSegmentation (the independent oracle) through our loading pipeline."""

from __future__ import annotations

import pytest
import torch

import clipseg
from clipseg.model.config import PRESETS
from clipseg.testing import perturb_, random_transformers_clipseg, tiny_config

transformers = pytest.importorskip("transformers")

PROMPTS = ["a cup", "something to sit on", "the red circle on the left", "", "a photo of a dog."]


def _reference_and_ours(config, tmp_path, seed=0):
    reference = random_transformers_clipseg(config, seed=seed)
    reference.save_pretrained(tmp_path / "hf")
    return reference, clipseg.load_model(tmp_path / "hf")


def _check(reference, ours, size: int, n_images: int = 2, n_prompts: int = len(PROMPTS)) -> None:
    """Every image against every prompt: logits within 1e-4, conditional vectors within 1e-5."""
    torch.manual_seed(size)
    images = torch.randn(n_images, 3, size, size)
    ids = ours.tokenizer(PROMPTS[:n_prompts]).ids
    pixel_values = images.repeat_interleave(n_prompts, dim=0)  # transformers pairs prompts 1:1 with images
    input_ids = ids.repeat(n_images, 1)
    with torch.inference_mode():
        expected = reference(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=(input_ids > 0).long()
        )
        text = ours.encode_text(ids)
        logits = ours(pixel_values, text.repeat(n_images, 1))
        expected_image = reference.clip.get_image_features(pixel_values=images).pooler_output
        image = ours.encode_image(images)
    assert (text.repeat(n_images, 1) - expected.conditional_embeddings).abs().max() <= 1e-5
    assert (image - expected_image).abs().max() <= 1e-5
    assert logits.shape == (n_images * n_prompts, 1, size, size)
    assert (logits[:, 0] - expected.logits).abs().max() <= 1e-4
    # The comparison means something only if outputs vary across pixels and prompts.
    assert expected.logits.std(dim=(1, 2)).min() > 1e-2
    assert (expected.logits[0] - expected.logits[1]).abs().max() > 1e-2


@pytest.mark.parametrize("head", ["simple", "refined"])
@pytest.mark.parametrize("size", [352, 224])
def test_tiny_config_matches_transformers(tmp_path, head, size):
    reference, ours = _reference_and_ours(tiny_config(head), tmp_path)
    _check(reference, ours, size)


@pytest.fixture(scope="module")
def full_size_reference():
    """One ViT-B/16 rd64 oracle (building it is the slow part); the refined head is swapped in on demand."""
    return random_transformers_clipseg(PRESETS["rd64"], seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["simple", "refined"])
def test_full_vit_b16_rd64_matches_transformers(tmp_path, full_size_reference, head):
    reference = full_size_reference
    if head == "refined":
        config = reference.config
        config.use_complex_transposed_convolution = True
        reference.decoder.transposed_convolution = type(reference.decoder)(config).transposed_convolution
        perturb_(reference.decoder.transposed_convolution, seed=2, decoder_prefixes=("",))
    reference.save_pretrained(tmp_path / "hf")
    ours = clipseg.load_model(tmp_path / "hf")
    assert ours.config.vision.width == 768 and ours.config.decoder.head == head
    _check(reference, ours, 352, n_images=1, n_prompts=3)
    _check(reference, ours, 224, n_images=1, n_prompts=2)


def test_decode_batched_over_prompts_equals_forward():
    model = clipseg.testing.random_model()
    images = torch.randn(2, 3, 96, 128)
    conditional = torch.randn(3, model.config.vision.output_dim)
    with torch.inference_mode():
        features = model.extract_features(images)
        batched = model.decode(features, conditional[[0, 1, 2, 2]], output_size=(96, 128),
                               image_index=torch.tensor([0, 0, 1, 0]))
        one = model(images[[0]].expand(3, -1, -1, -1), conditional)
        broadcast = model.decode([f[:1] for f in features], conditional, output_size=(96, 128))
    torch.testing.assert_close(batched[[0, 1, 3]], one[[0, 1, 2]], atol=1e-5, rtol=0)
    torch.testing.assert_close(broadcast, one, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[2], model(images[[1]], conditional[[2]])[0], atol=1e-5, rtol=0)
