"""Readers of the benchmark datasets (Pascal VOC/SBD, Pascal-5i, COCO-20i, LVIS) on synthetic data in the official
formats, and the episode samplers against a literal re-run of HSNet's sampling."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from clipseg.data.coco20i import (
    Coco20i,
    coco20i_classes,
    read_hsnet_coco_split,
    sample_coco_episodes,
)
from clipseg.data.lvis import LVIS, generalized_prompt_groups, normalise_category_name
from clipseg.data.pascal import (
    VOC_CLASSES,
    PascalVOC,
    pascal5i_classes,
    pascal5i_pairs_from_labels,
    read_hsnet_split,
    read_pfenet_list,
    sample_episodes,
)
from clipseg.data.synthetic_benchmarks import COCO_CATEGORIES, lvis_names


def test_voc_palette_aug_and_sbd_labels_agree(benchmarks):
    root = benchmarks / "pascal"
    voc = PascalVOC(root)
    aug = PascalVOC(root / "VOCdevkit", annotations="SegmentationClassAug")
    sbd = PascalVOC(root / "benchmark_RELEASE", annotations="SBD", split="val")
    assert len(voc) == len(sbd) == 18 and voc.image_ids == sbd.image_ids
    for image_id in voc.image_ids[:4]:
        label = voc.load_label(image_id)
        np.testing.assert_array_equal(label, aug.load_label(image_id))
        objects = (label > 0) & (label < 255)
        np.testing.assert_array_equal(sbd.load_label(image_id)[objects], label[objects])
        assert (label == 255).any() and not (sbd.load_label(image_id) == 255).any()  # only VOC has void borders
        assert voc.load_image(image_id).size == (96, 80)


def test_missing_datasets_say_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="VOCtrainval_11-May-2012.tar"):
        PascalVOC(tmp_path)
    with pytest.raises(FileNotFoundError, match="benchmark.tgz"):
        PascalVOC(tmp_path, annotations="SBD")
    with pytest.raises(FileNotFoundError, match="lvisdataset.org"):
        LVIS(tmp_path / "lvis_v1_val.json")
    with pytest.raises(FileNotFoundError, match="cocodataset.org"):
        Coco20i(tmp_path)
    with pytest.raises(FileNotFoundError, match="juhongm999/hsnet"):
        read_hsnet_split(tmp_path / "fold0.txt")
    with pytest.raises(ValueError, match="unknown annotation source"):
        PascalVOC(tmp_path, annotations="Instances")


def test_hsnet_lists_match_pfenet_rule_and_pfenet_list(benchmarks):
    root = benchmarks / "pascal"
    voc = PascalVOC(root)
    assert read_pfenet_list(root / "pfenet" / "lists" / "pascal" / "val.txt") == voc.image_ids
    for fold in range(4):
        pairs = read_hsnet_split(root / "hsnet" / "data" / "splits" / "pascal" / "val" / f"fold{fold}.txt")
        assert pairs == pascal5i_pairs_from_labels(voc, fold, min_pixels=64)
        assert {c for _, c in pairs} <= set(pascal5i_classes(fold))
    assert pascal5i_classes(3) == [16, 17, 18, 19, 20] and VOC_CLASSES[15] == "pottedplant"
    bad = root / "bad_fold.txt"
    bad.write_text("2008_000001_01\n")
    with pytest.raises(ValueError, match="expected '<image id>__<class>'"):
        read_hsnet_split(bad)


def _hsnet_pascal_episodes(metadata, n):
    """HSNet's DatasetPASCAL test sampling, literally: global numpy RNG seeded with 0, support != query."""
    classwise = {}
    for name, class_id in metadata:
        classwise.setdefault(class_id, []).append(name)
    np.random.seed(0)
    episodes = []
    for idx in range(n):
        query, class_sample = metadata[idx % len(metadata)]
        while True:
            support = np.random.choice(classwise[class_sample], 1, replace=False)[0]
            if query != support:
                break
        episodes.append((query, support, class_sample))
    return episodes


def test_pascal_episodes_reproduce_hsnet_sampling(benchmarks):
    pairs = read_hsnet_split(benchmarks / "pascal" / "hsnet" / "data" / "splits" / "pascal" / "val" / "fold1.txt")
    episodes = sample_episodes(pairs, 40)
    assert [(e.query, e.support, e.class_id) for e in episodes] == _hsnet_pascal_episodes(pairs, 40)
    assert all(e.query != e.support for e in episodes)
    with pytest.raises(ValueError, match="fewer than two images"):
        sample_episodes([("a", 1), ("b", 2), ("c", 2)], 3)


def test_coco20i_folds_lists_and_hsnet_episodes(benchmarks):
    root = benchmarks / "coco"
    coco = Coco20i(root)
    assert coco.class_name(0) == "person" and coco.class_name(79) == "toothbrush"
    assert coco20i_classes(2) == list(range(2, 80, 4))
    for fold in range(4):
        written = read_hsnet_coco_split(root / "splits" / "coco" / "val" / f"fold{fold}.pkl")
        assert written == coco.classwise_from_annotations(fold, min_pixels=64)
    classwise = read_hsnet_coco_split(root / "splits" / "coco" / "val" / "fold0.pkl")
    episodes = sample_coco_episodes(classwise, coco20i_classes(0), 12)
    np.random.seed(0)  # HSNet's DatasetCOCO.load_frame, literally
    for episode in episodes:
        class_sample = np.random.choice(coco20i_classes(0), 1, replace=False)[0]
        query = np.random.choice(classwise[class_sample], 1, replace=False)[0]
        while (support := np.random.choice(classwise[class_sample], 1, replace=False)[0]) == query:
            pass
        assert (episode.class_id, episode.query, episode.support) == (class_sample, query, support)
    mask = coco.class_mask(episodes[0].query, episodes[0].class_id)
    assert mask.any() and mask.shape == coco.load_image(episodes[0].query).size[::-1]


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo should-never-run",))


def test_split_files_are_read_without_running_code(tmp_path):
    path = tmp_path / "fold0.pkl"
    path.write_bytes(pickle.dumps({0: [_RunsCode()]}))
    with pytest.raises(ValueError, match="refusing"):
        read_hsnet_coco_split(path)
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="mapping from class index"):
        read_hsnet_coco_split(path)


def test_generalized_prompt_mapping_transcribes_the_supplementary():
    groups = generalized_prompt_groups()
    assert list(groups) == ["affordances", "attributes", "meronymy"]
    assert groups["affordances"]["sit on"][:3] == ["armchair", "sofa", "loveseat"]
    assert groups["affordances"]["ride on"] == ["horse", "pony", "motorcycle"]
    assert "bus (vehicle)" in groups["attributes"]["can be driven"]
    assert len(groups["meronymy"]["has legs"]) == 33 and groups["meronymy"]["has legs"][-1] == "person"
    for prompts in groups.values():
        for objects in prompts.values():
            assert len(objects) == len(set(objects))  # the source's repeated names are kept once


def test_lvis_reader_names_paths_and_masks(benchmarks):
    lvis = LVIS(benchmarks / "lvis" / "lvis_v1_val.json")
    found, missing = lvis.category_ids(lvis_names())
    assert not missing and len(found) == len(lvis_names())
    assert normalise_category_name("bus_(vehicle)") == "bus (vehicle)" == lvis.category_name(found["bus (vehicle)"])
    image_id = min(lvis.images)
    assert lvis.image_path(image_id) == benchmarks / "lvis" / "val2017" / f"{image_id:012d}.jpg"
    annotations = lvis.annotations_by_image[image_id]
    union = lvis.category_mask(image_id, [a.category_id for a in annotations])
    assert union.sum() == sum(lvis.instance_mask(a).sum() for a in annotations)  # synthetic shapes never overlap
    data = json.loads((benchmarks / "lvis" / "lvis_v1_val.json").read_text())
    assert data["images"][0]["coco_url"].startswith("http://images.cocodataset.org/val2017/")
    assert len(COCO_CATEGORIES) == 80 and COCO_CATEGORIES[-1] == (90, "toothbrush")
