"""Tests of the PhraseCut reader and PhraseCut+ sampling on a synthetic dataset in the official layout."""

import json

import numpy as np
from scipy import ndimage
import pytest
import torch

from clipseg.data.phrasecut import PhraseCut, polygons_to_mask
from clipseg.data.phrasecut_plus import PhraseCutPlus, find_object_crop
from clipseg.templates import TEMPLATES
from clipseg.data.synthetic import COLOURS, render_scene, write_phrasecut
from clipseg.model.config import IMAGENET_MEAN, IMAGENET_STD

N_IMAGES, SEED, SIZE = 40, 3, (96, 128)


@pytest.fixture(scope="module")
def phrasecut_root(tmp_path_factory):
    return write_phrasecut(tmp_path_factory.mktemp("pc"), N_IMAGES, seed=SEED, size=SIZE)


@pytest.fixture(scope="module")
def train(phrasecut_root):
    return PhraseCut(phrasecut_root, "train")


def test_polygons_to_mask_hand_case():
    """Pixel (row r, column c) is inside when its centre (x = c, y = r) is (skimage's polygon2mask, as the released
    load_sample); instances are united. Worked out by hand."""
    rectangle = [[1.5, 0.5], [4.5, 0.5], [4.5, 3.5], [1.5, 3.5]]  # centres x in {2, 3, 4}, y in {1, 2, 3}
    triangle = [[6.5, -0.5], [9.7, -0.5], [6.5, 2.7]]  # centres with x >= 7, y >= 0 and x + y < 9.2
    instances = [[rectangle], [triangle, [[0, 0]], []]]  # a one-point polygon marks its pixel; an empty one nothing
    expected = np.zeros((5, 10), dtype=bool)
    expected[1:4, 2:5] = True
    expected[0, 7:10] = True
    expected[1, 7:9] = True
    expected[2, 7] = True
    expected[0, 0] = True
    assert np.array_equal(polygons_to_mask(instances, 5, 10), expected)


def test_polygon_masks_are_pixel_centre_masks_not_pil_outlines():
    """A regular 64-gon of radius 10 around (20.3, 20.6): the mask is the set of pixel centres within the polygon,
    not PIL's filled outline, which is about one pixel larger all round."""
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    points = np.stack([20.3 + 10 * np.cos(angles), 20.6 + 10 * np.sin(angles)], axis=1)
    mask = polygons_to_mask([[points.tolist()]], 41, 41)
    rows, columns = np.mgrid[:41, :41]
    inside = np.hypot(columns - 20.3, rows - 20.6) < 10 * np.cos(np.pi / 64)  # the 64-gon's inscribed circle
    outside = np.hypot(columns - 20.3, rows - 20.6) > 10
    assert mask[inside].all() and not mask[outside].any()
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (41, 41))
    ImageDraw.Draw(canvas).polygon([(int(x), int(y)) for x, y in points], outline=1, fill=1)
    assert np.asarray(canvas, dtype=bool).sum() > 1.05 * mask.sum()


def test_reader_masks_match_the_rendered_scenes(phrasecut_root, train):
    rng = np.random.default_rng(SEED)
    scenes = [render_scene(rng, size=SIZE, n_shapes=(1, 4)) for _ in range(N_IMAGES)]
    assert len(train) > N_IMAGES // 2
    for index, task in enumerate(train.tasks):
        scene = scenes[task.image_id - 1]
        referred = [s for s in scene.shapes if task.phrase.startswith(s.phrase)]
        mask = train.load_mask(index)
        assert mask.shape == SIZE and mask.any()
        union = np.logical_or.reduce([s.mask for s in referred])
        # The scenes are drawn with PIL (outline included); the reader takes pixel centres: they differ only on the
        # outline, so the reader's mask lies between the scene mask shrunk and the scene mask itself.
        core = ndimage.binary_erosion(union, np.ones((3, 3)))
        assert (mask <= union).all()
        assert (core <= mask).all() or (len(referred) > 1 and mask.any())
        assert train.load_image(index).size == (SIZE[1], SIZE[0])
    assert train.image_path(1) == phrasecut_root / "images" / "1.jpg"


def test_reader_splits_and_errors(phrasecut_root, tmp_path):
    val, test = PhraseCut(phrasecut_root, "val"), PhraseCut(phrasecut_root.parent, "test")
    both = PhraseCut(phrasecut_root, "val_test")
    assert len(both) == len(val) + len(test) > 0
    train_ids = {t.image_id for t in PhraseCut(phrasecut_root, "train").tasks}
    assert train_ids.isdisjoint(t.image_id for t in both.tasks)
    some_id = next(iter(train_ids))
    assert some_id not in {t.image_id for t in PhraseCut(phrasecut_root, "train", exclude_image_ids={some_id}).tasks}
    with pytest.raises(ValueError, match="unknown PhraseCut split"):
        PhraseCut(phrasecut_root, "training")
    with pytest.raises(FileNotFoundError, match="refer_miniv.json"):
        PhraseCut(phrasecut_root, "miniv")
    with pytest.raises(FileNotFoundError, match="not found"):
        PhraseCut(tmp_path / "absent")
    broken = tmp_path / "VGPhraseCut_v0"
    broken.mkdir()
    (broken / "refer_train.json").write_text(json.dumps([{"task_id": "1__1", "image_id": 1}]))
    with pytest.raises(ValueError, match="lacks the key 'phrase'"):
        PhraseCut(tmp_path)


def test_find_object_crop_meets_the_coverage_or_returns_the_best_try():
    mask = np.zeros((60, 100), dtype=bool)
    mask[10:50, 70:95] = True
    for seed in range(10):
        x0, y0, x1, y1 = find_object_crop(mask, np.random.default_rng(seed))
        assert x1 - x0 == y1 - y0 == 60
        assert mask[y0:y1, x0:x1].sum() > 0.05 * mask.size
    tiny = np.zeros((60, 100), dtype=bool)
    tiny[30, 2] = True
    box = find_object_crop(tiny, np.random.default_rng(0))
    replay = np.random.default_rng(0)
    tries = []
    for _ in range(50):
        y, x = int(replay.integers(0, 1)), int(replay.integers(0, 41))
        tries.append(tiny[y : y + 60, x : x + 60].sum())
    assert tiny[box[1] : box[3], box[0] : box[2]].sum() == max(tries)


def test_negatives_are_drawn_with_probability_0_2(train):
    dataset = PhraseCutPlus(train, image_size=32, seed=1)
    plans = []
    for epoch in range(6):
        dataset.set_epoch(epoch)
        plans += [dataset.plan(i) for i in range(len(dataset))]
    rate = np.mean([p.negative for p in plans])
    assert len(plans) > 300 and abs(rate - 0.2) < 0.06
    for plan in plans:
        assert (plan.phrase != train.tasks[plan.source_index].phrase) == plan.negative


def test_supports_are_drawn_among_all_samples_of_the_phrase_the_query_included(train):
    """Released datasets/phrasecut.py: a support exists iff the (possibly swapped) phrase has more than one sample,
    and is drawn uniformly among all of them -- the query itself included."""
    dataset = PhraseCutPlus(train, image_size=32, seed=2)
    counts = {p: len(s) for p, s in dataset.samples_by_phrase.items()}
    self_draws, draws_with_choice = 0, 0.0
    seen_unique_negative = False
    for epoch in range(8):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            plan = dataset.plan(index)
            assert (plan.support_index is not None) == (counts[plan.phrase] > 1)
            if plan.support_index is None:
                assert plan.text_weight == 1.0
                seen_unique_negative |= plan.negative
            else:
                assert train.tasks[plan.support_index].phrase == plan.phrase
                assert 0.0 <= plan.text_weight <= 0.5
                if not plan.negative:
                    self_draws += plan.support_index == plan.source_index
                    draws_with_choice += 1 / counts[plan.phrase]  # expected self-draws
            assert plan.text in {t.format(plan.phrase) for t in TEMPLATES["shuffle+"]}
    assert draws_with_choice > 30 and abs(self_draws - draws_with_choice) < 4 * draws_with_choice**0.5
    assert seen_unique_negative  # a negative swapped to a unique phrase is text only (w = 1)


class _DotSource:
    """Two 40 x 40 grey-gradient images whose only object is the pixel (1, 1): lost in a nearest resize to 8."""

    phrases = ["a dot", "a dot"]

    def __len__(self):
        return 2

    def load_image(self, index):
        from PIL import Image

        ramp = np.linspace(0, 255, 40, dtype=np.float32)
        values = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (40, 1)), np.full((40, 40), 90.0)], -1)
        return Image.fromarray(values.astype(np.uint8))

    def load_mask(self, index):
        mask = np.zeros((40, 40), dtype=bool)
        mask[1, 1] = True
        return mask


def test_a_support_that_loses_its_object_is_the_darkened_blurred_crop():
    """Released behaviour: the support is resized before the visual prompt is applied; an empty mask makes
    img_preprocess take the whole image as background: 0.1 x the 15-tap, sigma-3 Gaussian blur (mirrored borders)."""
    dataset = PhraseCutPlus(_DotSource(), image_size=8, negative_prob=0.0, seed=0)
    plan, sample = dataset.plan(0), dataset[0]
    assert plan.support_index is not None and plan.support_crop == (0, 0, 40, 40)
    pixels = torch.from_numpy(np.asarray(_DotSource().load_image(0), dtype=np.float32)).permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(pixels, (8, 8), mode="bilinear", align_corners=True)[0].double()
    normalised = (resized / 255 - torch.tensor((0.485, 0.456, 0.406), dtype=torch.float64).view(3, 1, 1)) / torch.tensor(
        (0.229, 0.224, 0.225), dtype=torch.float64
    ).view(3, 1, 1)
    kernel = np.exp(-((np.arange(15) - 7.0) ** 2) / 18.0)
    kernel /= kernel.sum()
    blurred = np.stack(
        [ndimage.correlate1d(ndimage.correlate1d(c, kernel, axis=0, mode="mirror"), kernel, axis=1, mode="mirror")
         for c in normalised.numpy()]
    )
    np.testing.assert_allclose(sample["support"].numpy(), 0.1 * blurred, atol=1e-4)


def test_samples_follow_the_training_contract_and_align_image_and_target(train):
    dataset = PhraseCutPlus(train, image_size=48, negative_prob=0.3)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for index in range(0, len(dataset), 3):
        plan, sample = dataset.plan(index), dataset[index]
        assert sample["image"].shape == (3, 48, 48) and sample["image"].dtype == torch.float32
        assert sample["target"].shape == (1, 48, 48) and set(sample["target"].unique().tolist()) <= {0.0, 1.0}
        assert sample["support"].shape == (3, 48, 48) and sample["text"] == plan.text
        assert sample["text_weight"] == plan.text_weight
        assert bool(sample["support"].any()) == (plan.support_index is not None)
        if plan.negative:
            assert not sample["target"].any()
        elif sample["target"].sum() > 20:
            colour = ((sample["image"] * std + mean) * 255)[:, sample["target"][0].bool()].mean(dim=1)
            nearest = min(COLOURS, key=lambda name: float(torch.dist(torch.tensor(COLOURS[name]) * 0.92, colour)))
            assert plan.phrase.startswith(nearest)
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 48, 48) and len(batch["text"]) == 2 and batch["text_weight"].shape == (2,)


def test_samples_are_deterministic_per_seed_epoch_and_index(train):
    first, second = PhraseCutPlus(train, image_size=32, seed=5), PhraseCutPlus(train, image_size=32, seed=5)
    for index in (0, 7, len(first) - 1):
        a, b = first[index], second[index]
        assert all(torch.equal(a[k], b[k]) for k in ("image", "target", "support"))
        assert (a["text"], a["text_weight"]) == (b["text"], b["text_weight"])
    reference = [first.plan(i) for i in range(len(first))]
    assert [first.plan(i) for i in range(len(first))] == reference
    first.set_epoch(1)
    assert [first.plan(i) for i in range(len(first))] != reference
    assert [PhraseCutPlus(train, seed=6).plan(i) for i in range(len(first))] != reference


def test_exclusion_options_and_errors(train):
    removed = "red"
    dataset = PhraseCutPlus(train, image_size=32, negative_prob=1.0, exclude_phrase=lambda p: removed in p)
    assert all(removed not in p for p in dataset.phrases) and len(dataset) < len(train)
    plans = [dataset.plan(i) for i in range(len(dataset))]
    assert all(p.negative and removed not in p.phrase for p in plans)
    text_only = PhraseCutPlus(train, image_size=32, with_visual=False, prompt_templates="plain", crop=False)
    plan = text_only.plan(0)
    assert plan.support_index is None and plan.text_weight == 1.0 and plan.crop == (0, 0, SIZE[1], SIZE[0])
    assert plan.text == plan.phrase
    with pytest.raises(ValueError, match="image-space variant"):
        PhraseCutPlus(train, visual_variant="cls_mask_last")
    with pytest.raises(ValueError, match="unknown template set"):
        PhraseCutPlus(train, prompt_templates="random")
    with pytest.raises(ValueError, match="no samples left"):
        PhraseCutPlus(train, exclude_phrase=lambda p: True)
    with pytest.raises(IndexError):
        dataset.plan(len(dataset))
