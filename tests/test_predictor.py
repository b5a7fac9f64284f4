"""Predictor: backbone once per image, decoder batched over prompts, probabilities at the original size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from predictor_fixtures import photo, save_jpeg, tiny_model

from clipseg.image import load_image, preprocess
from clipseg.predictor import Prediction, Predictor
from clipseg.prompts import ImagePrompt, MixedPrompt
from clipseg.templates import TEMPLATES
from clipseg.visual_prompt import VARIANTS


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return photo("coffee")  # 400 x 600


@pytest.fixture
def predictor(model):
    return Predictor(model)


class Counter:
    """Wraps a bound method and counts its calls."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture
def backbone_calls(model, monkeypatch):
    counter = Counter(model.visual.forward_features)
    monkeypatch.setattr(model.visual, "forward_features", counter)
    return counter


def test_backbone_runs_once_per_image_whatever_the_prompts(predictor, coffee, backbone_calls):
    predictor.set_image(coffee)
    assert backbone_calls.calls == 1
    first = predictor.predict(["a cup", "a saucer", "a spoon"])
    second = predictor.predict("a table", negative=["a cup"])
    assert backbone_calls.calls == 1
    assert len(first) == 3 and len(second) == 1


def test_probabilities_are_upsampled_logits_then_sigmoid_at_the_original_size(predictor, model, coffee):
    predictor.set_image(coffee)
    prediction = predictor.predict(["a cup", "a spoon"])
    assert prediction.image_size == (400, 600)
    assert prediction.logits.shape == (2, 352, 352)
    assert prediction.probabilities.shape == (2, 400, 600)
    assert prediction.probabilities.dtype == torch.float32
    # Against the model's plain forward pass on the preprocessed image.
    with torch.no_grad():
        pixels = preprocess(load_image(coffee), 352, model.config.image_mean, model.config.image_std)[None].repeat(
            2, 1, 1, 1
        )
        conditional = model.encode_text(model.tokenizer(["a cup", "a spoon"]).ids)
        logits = model(pixels, conditional)
    torch.testing.assert_close(prediction.logits, logits[:, 0], atol=1e-4, rtol=1e-4)
    expected = torch.sigmoid(F.interpolate(logits, size=(400, 600), mode="bilinear", align_corners=False))[:, 0]
    torch.testing.assert_close(prediction.probabilities, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(prediction.probability(1), expected[1], atol=1e-4, rtol=0)
    assert 0.01 < prediction.masks(0.5).float().mean() < 0.99  # the test model's logits do vary
    assert torch.equal(prediction.mask(0, 0.5), prediction.masks(0.5)[0])


def test_exif_rotated_photo_gives_masks_of_the_displayed_size(predictor, tmp_path, coffee):
    path = save_jpeg(coffee, tmp_path / "rotated.jpg", orientation=6)
    predictor.set_image(path)
    assert predictor.original_size == (600, 400)
    assert predictor.predict("a cup").probabilities.shape == (1, 600, 400)


def test_tiny_and_huge_aspect_images(predictor):
    predictor.set_image(np.zeros((1, 1, 3), dtype=np.uint8))
    assert predictor.predict("a dot").probabilities.shape == (1, 1, 1)
    predictor.set_image(np.zeros((5, 900, 3), dtype=np.uint8))
    assert predictor.predict("a line").masks().shape == (1, 5, 900)


def test_predict_before_set_image_is_a_clear_error(model):
    with pytest.raises(RuntimeError, match=r"call predictor.set_image\(image\) before predict"):
        Predictor(model).predict("a cup")
    predictor = Predictor(model)
    predictor.set_image(np.zeros((8, 8, 3), dtype=np.uint8))
    predictor.reset_image()
    with pytest.raises(RuntimeError, match="no image set"):
        predictor.predict("a cup")


def test_bad_prompts(predictor, coffee):
    predictor.set_image(coffee)
    with pytest.raises(ValueError, match="empty text prompt"):
        predictor.predict("   ")
    with pytest.raises(ValueError, match="at least one prompt"):
        predictor.predict([])
    with pytest.raises(TypeError, match="a prompt is a str"):
        predictor.predict([42])
    with pytest.raises(ValueError, match="unknown template set"):
        predictor.predict("a cup", templates="fancy")
    with pytest.raises(ValueError, match="exactly one"):
        predictor.predict("a cup", templates=["no placeholder"])


def test_long_and_unicode_prompts(predictor, coffee):
    predictor.set_image(coffee)
    long_prompt = "a red cup on a wooden table " * 72  # ~2,000 characters
    with pytest.warns(UserWarning, match="longer than 77 tokens"):
        prediction = predictor.predict([long_prompt, "une tasse à café ☕", "コーヒーカップ"])
    assert torch.isfinite(prediction.probabilities).all()
    assert prediction.names[1] == "une tasse à café ☕"


def test_templates_and_ensembling(predictor, model, coffee):
    predictor.set_image(coffee)
    vectors = predictor.encode_prompts(["cup"], templates="shuffle+", ensemble=True)
    with torch.no_grad():
        each = model.encode_text(model.tokenizer([t.format("cup") for t in TEMPLATES["shuffle+"]]).ids)
    torch.testing.assert_close(vectors[0], each.mean(0), atol=1e-5, rtol=1e-5)
    fixed = predictor.encode_prompts(["cup"], templates="fixed")
    with torch.no_grad():
        expected = model.encode_text(model.tokenizer(["a photo of a cup."]).ids)[0]
    torch.testing.assert_close(fixed[0], expected, atol=1e-5, rtol=1e-5)
    # Without ensembling a template is drawn per prompt, reproducibly.
    drawn = predictor.encode_prompts(["cup"], templates="shuffle")
    assert any(
        torch.allclose(drawn[0], v)
        for v in model.encode_text(
            model.tokenizer(["a photo of a cup.", "a photograph of a cup.", "an image of a cup.", "cup."]).ids
        )
    )
    torch.testing.assert_close(drawn, predictor.encode_prompts(["cup"], templates="shuffle"))


def test_conditional_vectors_are_cached_across_images(predictor, model, monkeypatch, coffee):
    counter = Counter(model.encode_text)
    monkeypatch.setattr(model, "encode_text", counter)
    for image in (coffee, coffee[::2], coffee[:, ::3]):
        predictor.set_image(image)
        predictor.predict(["a cup", "a saucer"], negative="a table")
    assert counter.calls == 1  # one batched text-encoder call for the three texts, then the cache
    small = Predictor(model, cache_size=1)
    small.set_image(coffee)
    small.predict(["a cup", "a saucer"])
    small.predict(["a cup", "a saucer"])
    assert counter.calls > 1 and len(small._cache) == 1


def test_negative_prompts_remove_their_regions(predictor, coffee):
    predictor.set_image(coffee)
    plain = predictor.predict("a cup")
    negated = predictor.predict("a cup", negative=["a table", "a spoon"])
    negatives = predictor.predict(["a table", "a spoon"])
    expected = plain.probabilities[0] * (1 - negatives.probabilities[0]) * (1 - negatives.probabilities[1])
    torch.testing.assert_close(negated.probabilities[0], expected, atol=1e-5, rtol=0)
    assert negated.masks(0.3).sum() < plain.masks(0.3).sum()


def test_union_and_label_map(predictor, coffee):
    predictor.set_image(coffee)
    prediction = predictor.predict(["a cup", "a saucer", "a spoon"])
    masks = prediction.masks(0.5)
    assert torch.equal(prediction.union(0.5), masks.any(dim=0))
    labels = prediction.label_map(background_threshold=0.5)
    assert labels.shape == (400, 600) and labels.dtype == torch.long
    probabilities = prediction.probabilities
    best, argmax = probabilities.max(dim=0)
    expected = torch.where(best > 0.5, argmax + 1, torch.zeros_like(argmax))
    assert torch.equal(labels, expected)
    assert set(labels.unique().tolist()) > {0}  # the background and at least one prompt


def test_predict_batch_equals_one_image_at_a_time_with_one_backbone_call(predictor, coffee, backbone_calls):
    images = [coffee, coffee[50:350, 100:500], photo("chelsea")]
    batch = predictor.predict_batch(images, ["a cup", "a cat"], negative="a table")
    assert backbone_calls.calls == 1
    assert [p.image_size for p in batch] == [(400, 600), (300, 400), (300, 451)]
    for image, batched in zip(images, batch, strict=True):
        predictor.set_image(image)
        single = predictor.predict(["a cup", "a cat"], negative="a table")
        torch.testing.assert_close(batched.logits, single.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batched.probabilities, single.probabilities, atol=1e-4, rtol=0)
    assert predictor.predict_batch([], "a cup") == []


def test_predict_batch_runs_the_backbone_in_chunks_of_four(predictor, coffee, backbone_calls):
    images = [coffee[: 200 + 20 * i] for i in range(5)]
    batch = predictor.predict_batch(images, "a cup")
    assert backbone_calls.calls == 2
    predictor.set_image(images[4])
    torch.testing.assert_close(batch[4].logits, predictor.predict("a cup").logits, atol=1e-4, rtol=1e-4)


def test_decoder_is_chunked_over_many_prompts(predictor, coffee):
    predictor.set_image(coffee)
    prompts = [f"object number {i}" for i in range(19)]  # more than one decoder chunk
    many = predictor.predict(prompts)
    assert many.logits.shape == (19, 352, 352)
    torch.testing.assert_close(many.logits[17], predictor.predict(prompts[17]).logits[0], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def support(coffee):
    mask = np.zeros(coffee.shape[:2], dtype=bool)
    mask[40:230, 150:390] = True  # the cup
    return coffee, mask


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_visual_prompt_variant(predictor, model, support, variant):
    image, mask = support
    prompt = ImagePrompt(image, mask, variant=variant, name="cup example")
    vector = predictor.encode_prompts([prompt])
    assert vector.shape == (1, model.config.vision.output_dim) and torch.isfinite(vector).all()


def test_image_prompt_matches_prepare_support_and_averages_examples(predictor, model, support):
    from clipseg.image import resize_mask
    from clipseg.visual_prompt import prepare_support

    image, mask = support
    config = model.config

    def embedding(img, msk, variant):
        prepared = prepare_support(
            preprocess(load_image(img), 352, config.image_mean, config.image_std),
            torch.from_numpy(resize_mask(msk, 352)),
            variant,
            352,
            mean=config.image_mean,
            std=config.image_std,
        )
        token_mask = None if prepared.token_mask is None else prepared.token_mask[None]
        with torch.no_grad():
            return model.encode_image(
                prepared.pixel_values[None],
                token_mask=token_mask,
                token_mask_mode=prepared.token_mask_mode or "cls_last",
            )[0]

    for variant in ("crop_blur_highlight", "cls_mask_last"):
        ours = predictor.encode_prompts([ImagePrompt(image, mask, variant=variant)])[0]
        torch.testing.assert_close(ours, embedding(image, mask, variant), atol=1e-5, rtol=1e-5)
    other = np.zeros_like(mask)
    other[250:390, 20:580] = True  # the saucer
    averaged = predictor.encode_prompts([ImagePrompt([image, image], [mask, other])])[0]
    expected = (embedding(image, mask, "crop_blur_highlight") + embedding(image, other, "crop_blur_highlight")) / 2
    torch.testing.assert_close(averaged, expected, atol=1e-5, rtol=1e-5)


def test_image_prompt_segments_and_mixes_with_text(predictor, support, backbone_calls):
    image, mask = support
    predictor.set_image(photo("chelsea"))
    visual = ImagePrompt(image, mask, name="cup example")
    prediction = predictor.predict(["a cup", visual, MixedPrompt("a cup", visual, text_weight=0.3)])
    assert prediction.names == ("a cup", "cup example", "a cup")
    assert backbone_calls.calls == 1  # the support image's CLIP pass does not touch the stored activations
    text_vector, image_vector, mixed = predictor.encode_prompts(
        ["a cup", visual, MixedPrompt("a cup", visual, text_weight=0.3)]
    )
    torch.testing.assert_close(mixed, 0.3 * text_vector + 0.7 * image_vector)


def test_image_prompt_errors(support, tmp_path):
    image, mask = support
    with pytest.raises(ValueError, match=r"support mask 1 is 10x10 but support image 1 is 600x400"):
        ImagePrompt(image, np.ones((10, 10), dtype=bool))
    with pytest.raises(ValueError, match="support mask 1 is empty"):
        ImagePrompt(image, np.zeros(mask.shape, dtype=bool))
    with pytest.raises(ValueError, match="2 support images but 1 support masks"):
        ImagePrompt([image, image], [mask])
    with pytest.raises(ValueError, match="unknown visual prompt variant 'sparkle'"):
        ImagePrompt(image, mask, variant="sparkle")
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        ImagePrompt(image, tmp_path / "nothing.png")
    with pytest.raises(ValueError, match="text_weight"):
        MixedPrompt("a cup", ImagePrompt(image, mask), text_weight=1.5)


def test_prediction_without_negatives_is_plain_sigmoid():
    logits = torch.randn(2, 8, 8)
    prediction = Prediction(("a", "b"), logits, torch.zeros(0, 8, 8), (8, 8))
    torch.testing.assert_close(prediction.probabilities, torch.sigmoid(logits))


def test_device_argument_moves_the_model(model):
    predictor = Predictor(model, device="cpu")
    assert predictor.device == torch.device("cpu")
    predictor.set_image(np.zeros((20, 30, 3), dtype=np.uint8))
    assert predictor.predict("x").logits.device == torch.device("cpu")
