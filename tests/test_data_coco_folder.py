"""Tests of the COCO-format reader and the own-data folder/CSV reader on synthetic datasets."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from pycocotools.coco import COCO

from clipseg.data.coco import CocoInstances, CocoReferringSource, segmentation_to_mask
from clipseg.data.folder import FolderSource
from clipseg.data.phrasecut_plus import PhraseCutPlus
from clipseg.data.synthetic import render_scene, write_coco, write_folder

N_IMAGES, SEED, SIZE = 12, 4, (64, 80)


@pytest.fixture(scope="module")
def coco_file(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("coco"), N_IMAGES, seed=SEED, size=SIZE)


def _scenes():
    rng = np.random.default_rng(SEED)
    return [render_scene(rng, size=SIZE, n_shapes=(1, 4)) for _ in range(N_IMAGES)]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside pycocotools' annToMask
def test_coco_masks_match_pycocotools_for_every_encoding(coco_file, capsys):
    instances = CocoInstances(coco_file)
    reference = COCO(str(coco_file))
    capsys.readouterr()
    encodings = set()
    for annotation in reference.loadAnns(reference.getAnnIds()):
        segmentation = annotation["segmentation"]
        encodings.add("polygon" if isinstance(segmentation, list) else type(segmentation["counts"]).__name__)
        assert np.array_equal(instances.instance_mask(annotation), reference.annToMask(annotation).astype(bool))
    assert encodings == {"polygon", "str", "list"}


def test_coco_category_masks_match_the_scenes(coco_file):
    instances = CocoInstances(coco_file)
    scenes = _scenes()
    assert instances.image_ids == list(range(1, N_IMAGES + 1))
    for image_id, scene in zip(instances.image_ids, scenes):
        assert instances.load_image(image_id).size == (SIZE[1], SIZE[0])
        names = {instances.categories[c] for c in instances.categories_in(image_id)}
        assert names == {s.phrase for s in scene.shapes}
        for phrase in names:
            union = np.logical_or.reduce([s.mask for s in scene.shapes if s.phrase == phrase])
            mask = instances.category_mask(image_id, instances.category_id(phrase))
            # pycocotools rasterises polygons with its own convention: only pixels along the edge may differ.
            assert not (mask & ~ndimage.binary_dilation(union, iterations=2)).any()
            assert not (ndimage.binary_erosion(union, iterations=2) & ~mask).any()
        crowd_free = {instances.categories[c] for c in instances.categories_in(image_id, include_crowd=False)}
        assert crowd_free <= names


def test_segmentation_to_mask_hand_cases():
    polygon = segmentation_to_mask([[1, 1, 4, 1, 4, 3, 1, 3], [0, 0, 1]], 5, 6)
    assert polygon[1:3, 1:4].all() and polygon.sum() <= 12
    rle = segmentation_to_mask({"size": [3, 2], "counts": [1, 2, 3]}, 3, 2)
    assert rle.flatten(order="F").tolist() == [False, True, True, False, False, False]
    assert not segmentation_to_mask([[0, 0, 1, 1]], 4, 4).any()
    with pytest.raises(ValueError, match="RLE size"):
        segmentation_to_mask({"size": [4, 4], "counts": [16]}, 3, 2)
    with pytest.raises(ValueError, match="unrecognised"):
        segmentation_to_mask({"bbox": [0, 0, 1, 1]}, 3, 2)


def test_coco_referring_source_feeds_phrasecut_plus(coco_file):
    instances = CocoInstances(coco_file)
    source = CocoReferringSource(instances)
    assert len(source) == sum(len(instances.categories_in(i)) for i in instances.image_ids)
    image_id, category_id = source.samples[0]
    assert source.phrases[0] == instances.categories[category_id]
    assert np.array_equal(source.load_mask(0), instances.category_mask(image_id, category_id))
    only = CocoReferringSource(instances, category_ids=[category_id])
    assert set(only.phrases) == {instances.categories[category_id]}
    sample = PhraseCutPlus(source, image_size=32)[0]
    assert sample["image"].shape == (3, 32, 32) and sample["target"].shape == (1, 32, 32)
    with pytest.raises(ValueError, match="unknown COCO category"):
        CocoReferringSource(instances, category_ids=[999])


def test_coco_errors(coco_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoInstances(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(FileNotFoundError, match="image directory"):
        CocoInstances(bad)
    with pytest.raises(ValueError, match="missing"):
        CocoInstances(bad, image_dir=tmp_path)
    with pytest.raises(KeyError, match="no COCO category"):
        CocoInstances(coco_file).category_id("unicorn")


@pytest.mark.parametrize("as_csv", [False, True])
def test_folder_source_reads_both_layouts(tmp_path, as_csv):
    written = write_folder(tmp_path, N_IMAGES, seed=SEED, size=SIZE, as_csv=as_csv)
    source = FolderSource(written)
    scenes = _scenes()
    assert len(source) == sum(len({s.phrase for s in scene.shapes}) for scene in scenes)
    for index, sample in enumerate(source.samples):
        scene = scenes[int(sample.image_path.stem.split("_")[1])]
        phrase = sample.prompt.removeprefix("the ")
        union = np.logical_or.reduce([s.mask for s in scene.shapes if s.phrase == phrase])
        assert np.array_equal(source.load_mask(index), union)
        assert source.load_image(index).size == (SIZE[1], SIZE[0])
    batch = torch.utils.data.default_collate([PhraseCutPlus(source, image_size=32)[i] for i in range(2)])
    assert batch["target"].shape == (2, 1, 32, 32)


def test_folder_mask_value_conventions_and_errors(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (4, 3)).save(tmp_path / "images" / "a.jpg")
    zero_one = np.array([[0, 1, 1, 0]] * 3, dtype=np.uint8)
    Image.fromarray(zero_one).save(tmp_path / "masks" / "a__a red cup.png")
    Image.fromarray(np.array([[0, 100, 200, 255]] * 3, dtype=np.uint8)).save(tmp_path / "masks" / "a__the kettle.png")
    source = FolderSource(tmp_path)
    assert source.phrases == ["a red cup", "the kettle"]
    assert source.load_mask(0)[0].tolist() == [False, True, True, False]
    assert source.load_mask(1)[0].tolist() == [False, False, True, True]
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(tmp_path / "masks" / "a__tiny.png")
    with pytest.raises(ValueError, match="is 2x2 but image"):
        FolderSource(tmp_path).load_mask(2)
    Image.fromarray(zero_one).save(tmp_path / "masks" / "noprompt.png")
    with pytest.raises(ValueError, match="must be named"):
        FolderSource(tmp_path)
    (tmp_path / "masks" / "noprompt.png").unlink()
    Image.fromarray(zero_one).save(tmp_path / "masks" / "b__cup.png")
    with pytest.raises(FileNotFoundError, match="no image named 'b'"):
        FolderSource(tmp_path)
    table = tmp_path / "list.csv"
    table.write_text("image,mask\nimages/a.jpg,masks/a__tiny.png\n")
    with pytest.raises(ValueError, match="missing \\['prompt'\\]"):
        FolderSource(table)
    table.write_text("image,mask,prompt\nimages/a.jpg,masks/gone.png,cup\n")
    with pytest.raises(FileNotFoundError, match="list.csv:2: file not found"):
        FolderSource(table)
    with pytest.raises(FileNotFoundError, match="own-data source not found"):
        FolderSource(tmp_path / "nowhere")
