"""Tests of the synthetic scene renderer shared by all dataset tests."""

import json

import numpy as np
import pytest

from clipseg.data.synthetic import COLOURS, SHAPE_KINDS, main, rasterize_polygons, render_scene, write_phrasecut


def test_render_scene_is_deterministic_per_seed():
    first = render_scene(np.random.default_rng(7), size=(64, 80), n_shapes=(2, 3))
    second = render_scene(np.random.default_rng(7), size=(64, 80), n_shapes=(2, 3))
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert [s.phrase for s in first.shapes] == [s.phrase for s in second.shapes]


def test_render_scene_shapes_are_disjoint_and_match_their_polygons():
    for seed in range(20):
        scene = render_scene(np.random.default_rng(seed), size=(72, 96), n_shapes=(1, 4))
        assert scene.image.size == (96, 72) and scene.image.mode == "RGB"
        assert 1 <= len(scene.shapes) <= 4
        union = np.zeros((72, 96), dtype=int)
        for shape in scene.shapes:
            assert shape.kind in SHAPE_KINDS and shape.colour in COLOURS
            assert shape.phrase == f"{shape.colour} {shape.kind}"
            assert shape.mask.shape == (72, 96) and shape.mask.dtype == bool and shape.mask.any()
            assert np.array_equal(shape.mask, rasterize_polygons(shape.polygon, (72, 96)))
            union += shape.mask
        assert union.max() == 1


def test_shape_pixels_carry_the_named_colour():
    scene = render_scene(np.random.default_rng(1), size=(96, 96), n_shapes=(3, 3))
    pixels = np.asarray(scene.image).astype(float)
    for shape in scene.shapes:
        mean_colour = pixels[shape.mask].mean(axis=0)
        nearest = min(COLOURS, key=lambda name: np.linalg.norm(np.asarray(COLOURS[name]) * 0.92 - mean_colour))
        assert nearest == shape.colour


def test_rasterize_polygons_hand_case():
    mask = rasterize_polygons([[1, 1, 4, 1, 4, 3, 1, 3]], (5, 6))
    expected = np.zeros((5, 6), dtype=bool)
    expected[1:4, 1:5] = True
    assert np.array_equal(mask, expected)


def test_render_scene_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_shapes"):
        render_scene(np.random.default_rng(0), n_shapes=(3, 1))
    with pytest.raises(ValueError, match="colours"):
        render_scene(np.random.default_rng(0), colours=("mauve",))


def test_render_scene_radius_bounds_the_shapes():
    # A shape's vertices lie on its circumscribed circle, so its mask fits in a square of side 2 * radius (+1 px
    # for whole-pixel rounding); 0.0625 of 400 px is a 25 px radius.
    scene = render_scene(np.random.default_rng(3), size=(400, 400), n_shapes=(3, 3), radius=(0.03, 0.0625))
    for shape in scene.shapes:
        rows, cols = np.nonzero(shape.mask)
        assert np.ptp(rows) + 1 <= 51 and np.ptp(cols) + 1 <= 51
    with pytest.raises(ValueError, match="radius"):
        render_scene(np.random.default_rng(0), radius=(0.3, 0.2))


def test_write_phrasecut_follows_the_official_layout(tmp_path):
    root = write_phrasecut(tmp_path, 10, seed=0, size=(48, 64), split_fractions=(0.6, 0.2, 0.2))
    assert root == tmp_path / "VGPhraseCut_v0"
    splits = {split: json.loads((root / f"refer_{split}.json").read_text()) for split in ("train", "val", "test")}
    info = json.loads((root / "image_data_split.json").read_text())
    assert [i["split"] for i in info] == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    task = splits["train"][0]
    assert set(task) == {"task_id", "image_id", "ann_ids", "instance_boxes", "Polygons", "phrase", "phrase_structure"}
    assert task["task_id"] == f"{task['image_id']}__{'_'.join(map(str, task['ann_ids']))}"
    assert len(task["Polygons"]) == len(task["instance_boxes"]) == len(task["ann_ids"])
    assert all(len(point) == 2 for polygons in task["Polygons"] for polygon in polygons for point in polygon)
    assert (root / "images" / f"{task['image_id']}.jpg").is_file()
    with pytest.raises(ValueError, match="n_images"):
        write_phrasecut(tmp_path, 0)


def test_command_line_writes_each_format(tmp_path, capsys):
    for fmt, expected in [("phrasecut", "VGPhraseCut_v0"), ("coco", "annotations.json"),
                          ("folder", "folder"), ("folder-csv", "annotations.csv")]:
        main([fmt, str(tmp_path / fmt), "--n", "2", "--height", "32", "--width", "40"])
        assert capsys.readouterr().out.strip().endswith(expected)
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert len(coco["images"]) == 2 and coco["images"][0]["height"] == 32
    assert len(list((tmp_path / "folder" / "masks").glob("*__the *.png"))) >= 2
