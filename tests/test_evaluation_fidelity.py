"""Evaluation inputs as the released pipelines made them (issue 12, items 7-10): each expectation is the original's
expression (datasets/phrasecut.py ``load_sample``, PFENet's ``test_Resize``, metrics.py ``resize_pred``, the
Visual_Feature_Engineering notebook) evaluated on a tiny input here, or a hand computation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from PIL import Image

from clipseg.data.phrasecut_plus import PhraseCutPlus
from clipseg.evaluation.config import config_from_dict
from clipseg.evaluation.engine import conditionals
from clipseg.evaluation.inference import (
    Segmenter,
    place_mask,
    prepare_input,
    probabilities_at_original,
    resize_labels,
)
from clipseg.evaluation.protocols import make_protocol
from clipseg.evaluation.protocols.visual_prompt_engineering import clip_input
from clipseg.testing import random_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_SIZE = 64  # the protocols' input size in these tests (the tiny model's)
pytestmark = pytest.mark.usefixtures("single_thread")


def _normalise(pixels01: torch.Tensor) -> torch.Tensor:
    return (pixels01 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def _image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# --- PhraseCut (Tables 3, 9): load_sample's resize ---------------------------------------------------------------


def _load_sample_image(image: Image.Image, size: int) -> torch.Tensor:
    """datasets/phrasecut.py load_sample (aug_crop=False): the image part."""
    img = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0).float()
    img = nnf.interpolate(img, (size, size), mode="bilinear", align_corners=True)[0]
    return _normalise(img / 255.0)


def _load_sample_mask(seg: np.ndarray, size: int) -> torch.Tensor:
    seg = torch.from_numpy(seg.astype("uint8")).view(1, 1, *seg.shape)
    return nnf.interpolate(seg, (size, size), mode="nearest")[0, 0]


def test_phrasecut_inputs_are_resized_as_load_sample_and_as_training():
    image = _image(37, 53)
    pixels, _ = prepare_input(image, 24, "squash", MEAN, STD, resize="aligned")
    torch.testing.assert_close(pixels, _load_sample_image(image, 24), atol=1e-5, rtol=0)
    # PIL's antialiased bilinear (the old behaviour) is far from it when shrinking
    pil, _ = prepare_input(image, 24, "squash", MEAN, STD, resize="pil")
    assert (pil - pixels).abs().max() > 0.1
    mask = np.zeros((37, 53), dtype=bool)
    mask[5:30:2, 7:50:3] = True
    assert torch.equal(place_mask(mask, 24, "squash"), _load_sample_mask(mask, 24).bool())

    # Training (PhraseCut+ without a crop) sees exactly the same pixels and target.
    class One:
        phrases = ["thing"]

        def __len__(self):
            return 1

        def load_image(self, index):
            return image

        def load_mask(self, index):
            return mask

    sample = PhraseCutPlus(One(), image_size=24, negative_prob=0.0, with_visual=False, crop=False)[0]
    torch.testing.assert_close(sample["image"], pixels, atol=1e-6, rtol=0)
    assert torch.equal(sample["target"][0].bool(), place_mask(mask, 24, "squash"))


def test_phrasecut_protocol_queries_use_load_samples_resize(benchmarks, tiny_model_dir):
    config = config_from_dict(
        {
            "table": "3",
            "protocol": "phrasecut",
            "dataset": {"root": str(benchmarks / "phrasecut")},
            "image_size": 40,
            "models": [{"name": "m", "source": str(tiny_model_dir)}],
        }
    )
    protocol = make_protocol(config)
    protocol._stats = (MEAN, STD)
    query = protocol.samples("text", protocol.options)[0].load()
    dataset = protocol.dataset
    torch.testing.assert_close(query.image, _load_sample_image(dataset.load_image(0), 40), atol=1e-5, rtol=0)
    assert torch.equal(query.target, _load_sample_mask(dataset.load_mask(0), 40).bool())


# --- item 8: no ground-truth rescue -------------------------------------------------------------------------------


def test_a_vanishing_object_leaves_an_empty_mask_and_an_empty_support_still_conditions():
    speck = np.zeros((150, 200), dtype=bool)
    speck[100, 101] = True  # torch nearest samples rows floor(i * 150 / 16) = 0, 9, 18, ..., never row 100
    assert not place_mask(speck, 16, "squash").any()
    assert not _load_sample_mask(speck, 16).any()
    model = random_model(seed=0)
    segmenter = Segmenter(model, image_size=model.config.vision.image_size)
    size = model.config.vision.image_size
    image, _ = prepare_input(_image(150, 200), size, "squash", segmenter.mean, segmenter.std)
    embedding = segmenter.support_embeddings([image], [place_mask(speck, size, "squash")], "crop_blur_highlight")
    assert embedding.shape[0] == 1 and torch.isfinite(embedding).all()


# --- Pascal-5i (Tables 5, 7): PFENet's test_Resize and the scorer's resize_pred -----------------------------------


def _pfenet_test_resize(image: np.ndarray, label: np.ndarray, test_size: int):
    """PFENet util/transform.py test_Resize (image float32 RGB as SemData reads it)."""

    def find_new_hw(ori_h, ori_w):
        if max(ori_h, ori_w) > test_size:
            if ori_h >= ori_w:
                new_h, new_w = test_size, int(ori_w * test_size * 1.0 / ori_h)
            else:
                new_h, new_w = int(ori_h * test_size * 1.0 / ori_w), test_size
            return (new_h // 8) * 8, (new_w // 8) * 8
        return ori_h, ori_w

    new_h, new_w = find_new_hw(*image.shape[:2])
    back = np.zeros((test_size, test_size, 3))
    back[:new_h, :new_w] = cv2.resize(image, dsize=(new_w, new_h), interpolation=cv2.INTER_LINEAR)
    s_mask = cv2.resize(label.astype(np.float32), dsize=(new_w, new_h), interpolation=cv2.INTER_NEAREST)
    back_mask = np.ones((test_size, test_size)) * 255
    back_mask[:new_h, :new_w] = s_mask
    return back, back_mask


def test_pascal_letterbox_is_pfenets_test_resize():
    image = _image(45, 61, seed=1)
    label = np.zeros((45, 61), dtype=np.uint8)
    label[10:30:3, 5:55:2] = 1
    expected_image, expected_label = _pfenet_test_resize(np.float32(np.array(image)), label, 32)
    pixels, placement = prepare_input(image, 32, "letterbox", MEAN, STD)
    expected = (torch.from_numpy(expected_image).permute(2, 0, 1).float() - torch.tensor(MEAN)[:, None, None] * 255)
    expected = expected / (torch.tensor(STD)[:, None, None] * 255)
    torch.testing.assert_close(pixels, expected, atol=1e-4, rtol=0)
    assert placement.content == (16, 32)  # 45 * 32 / 61 = 23.6 -> 23 -> 16 (multiples of 8)
    support = place_mask(label.astype(bool), 32, "letterbox")
    assert torch.equal(support, torch.from_numpy(expected_label == 1))  # the support: s_y == 1


def test_pascal_predictions_are_resized_as_resize_pred():
    """pfe_dataset pads the original label to L x L (L = longer side); metrics.py resizes the whole predicted
    canvas to that, bilinear with aligned corners; the padding (255) is ignored."""
    probabilities = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(0))
    placement = prepare_input(_image(45, 61), 32, "letterbox", MEAN, STD)[1]
    back = probabilities_at_original(probabilities, placement, "letterbox")
    expected = nnf.interpolate(probabilities.unsqueeze(1), size=(61, 61), mode="bilinear", align_corners=True)
    torch.testing.assert_close(back, expected[:, 0, :45, :61])


def test_zero_shot_labels_use_torch_nearest():
    labels = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 255]], dtype=np.uint8)
    # torch nearest takes rows/columns floor(i * 3 / 4) = 0, 0, 1, 2 (PIL's centre sampling gives 0, 1, 1, 2)
    expected = labels[np.ix_([0, 0, 1, 2], [0, 0, 1, 2])]
    assert np.array_equal(resize_labels(labels, 4), expected)


# --- item 9: Table 2 inputs as the notebook built them ------------------------------------------------------------


def test_table2_masking_rows_run_at_352_and_image_rows_at_224():
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.normal(size=(3, 352, 352)).astype(np.float32))
    mask = torch.zeros(352, 352)
    mask[100:250, 80:200] = 1
    inputs, token_mask, mode = clip_input(pixels, mask, "cls_mask_last", 224, MEAN, STD)
    assert inputs.shape == (3, 352, 352) and torch.equal(inputs, pixels)
    assert mode == "cls_last" and torch.equal(token_mask, mask)
    # "BG blur": img_preprocess(blur=3) then nnf.interpolate(processed, (224, 224), mode='bilinear')
    blurred = torch.from_numpy(cv2.GaussianBlur(pixels.permute(1, 2, 0).numpy(), (15, 15), 3)).permute(2, 0, 1)
    processed = pixels * mask + 1 * blurred * (1 - mask)
    expected = nnf.interpolate(processed[None], (224, 224), mode="bilinear")[0]
    inputs, token_mask, _ = clip_input(pixels, mask, "blur", 224, MEAN, STD)
    assert token_mask is None
    torch.testing.assert_close(inputs, expected, atol=1e-4, rtol=0)
    # a crop: object_crop's nearest resize straight to 224 (no 352 detour): every value is a value of the image
    inputs, _, _ = clip_input(pixels, mask, "crop", 224, MEAN, STD)
    assert inputs.shape == (3, 224, 224)
    assert torch.isin(inputs[:, 112, 112], pixels[:, 80:270, 68:212]).all()


# --- item 10: Table 9 visual column --------------------------------------------------------------------------------


def _table9(benchmarks, model, **options):
    return make_protocol(
        config_from_dict(
            {
                "table": "9",
                "protocol": "phrasecut",
                "dataset": {"root": str(benchmarks / "phrasecut")},
                "image_size": IMAGE_SIZE,
                "options": {"prompts": ["visual"], **options},
                "models": [{"name": "m", "source": str(model)}],
            }
        )
    )


def test_table9_unique_phrases_skipped_by_default_or_zero_support_as_released(benchmarks, tiny_model_dir):
    intended = _table9(benchmarks, tiny_model_dir)
    released = _table9(benchmarks, tiny_model_dir, unique_phrases="zero_support")
    tasks = intended.dataset.tasks
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task.phrase] = counts.get(task.phrase, 0) + 1
    unique = sum(1 for task in tasks if counts[task.phrase] == 1)
    assert unique > 0
    skip = intended.samples("visual", intended.options)
    every = released.samples("visual", released.options)
    assert len(skip) == len(tasks) - unique and len(every) == len(tasks)
    model = random_model(seed=3)
    segmenter = Segmenter(model, image_size=IMAGE_SIZE)
    released._stats = (segmenter.mean, segmenter.std)
    by_key = {s.key: s for s in every}
    lonely = next(t for t in tasks if counts[t.phrase] == 1)
    query = by_key[f"visual/{lonely.task_id}"].load()
    assert query.support_as_input and torch.equal(query.support[0], torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE))
    # conditioned on CLIP's embedding of the all-zero (normalised) image, as data_x[1] = zeros_like(img)
    expected = model.encode_image(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    torch.testing.assert_close(conditionals(segmenter, [query], "crop_blur_highlight"), expected)
    # the draws of the other samples' supports do not change
    assert [s.key for s in skip] == [s.key for s in every if s.key in {k.key for k in skip}]


def test_unknown_unique_phrase_mode_is_an_error(benchmarks, tiny_model_dir):
    with pytest.raises(ValueError, match="unique_phrases must be one of"):
        _table9(benchmarks, tiny_model_dir, unique_phrases="drop")
