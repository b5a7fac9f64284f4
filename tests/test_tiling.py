"""Tiled inference: window geometry, blend weights, gating, and the predictor's tiled path (tiny random model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from predictor_fixtures import photo, tiny_model

from clipseg.predictor import Predictor
from clipseg.tiling import Tile, TileOptions, axis_starts, blend_weights, fuse, plan_tiles, scaled_box

TILE = 352


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(tiny_model())


@pytest.mark.parametrize(
    ("height", "width", "scales"),
    [(1000, 1000, (2,)), (3000, 4000, (2, 4)), (353, 1201, (3,)), (777, 500, (2, 5)), (5000, 400, (2,))],
)
def test_windows_cover_every_pixel_and_stay_inside(height: int, width: int, scales: tuple[int, ...]) -> None:
    options = TileOptions(scales=scales)
    tiles = plan_tiles(height, width, options, tile_size=TILE)
    assert tiles
    for scale in {tile.scale for tile in tiles}:
        covered = np.zeros((height, width), dtype=int)
        for tile in (t for t in tiles if t.scale == scale):
            assert 0 <= tile.top and tile.top + tile.size <= height
            assert 0 <= tile.left and tile.left + tile.size <= width
            # Never finer than the model input, never larger than the shorter side.
            assert min(TILE, height, width) <= tile.size <= min(height, width)
            covered[tile.top : tile.top + tile.size, tile.left : tile.left + tile.size] += 1
        assert covered.min() >= 1


def test_scale_two_on_a_square_image_is_a_two_by_two_grid_with_the_requested_overlap() -> None:
    tiles = plan_tiles(2000, 2000, TileOptions(scales=(2,), overlap=0.25), tile_size=TILE)
    # Two windows of side s overlapping by s/4 span 2000 px: 2s - s/4 = 2000 -> s = 1143 (rounded up).
    assert len(tiles) == 4
    assert {tile.size for tile in tiles} == {1143}
    assert sorted({tile.top for tile in tiles}) == [0, 2000 - 1143]


def test_axis_starts_are_even_and_span_the_axis() -> None:
    assert axis_starts(1000, 400, 0.25) == [0, 300, 600]  # stride <= 300 needs 3 windows: 0, 300, 600
    assert axis_starts(400, 400, 0.25) == [0]


@pytest.mark.parametrize(("height", "width"), [(352, 352), (200, 300), (352, 100)])
def test_images_no_larger_than_the_model_input_need_no_tiles(height: int, width: int) -> None:
    assert plan_tiles(height, width, TileOptions(scales=(2, 4)), tile_size=TILE) == []


@pytest.mark.parametrize(("height", "width", "canvas"), [(1000, 1500, (352, 528)), (3000, 4000, (501, 668))])
def test_blend_weights_sum_to_one_everywhere(height: int, width: int, canvas: tuple[int, int]) -> None:
    options = TileOptions(scales=(3,), overlap=0.3)
    tiles = plan_tiles(height, width, options, tile_size=TILE)
    weights = blend_weights(tiles, canvas, (height, width), options.overlap)
    total = np.zeros(canvas)
    fy, fx = canvas[0] / height, canvas[1] / width
    for tile, weight in zip(tiles, weights, strict=True):
        top, bottom, left, right = scaled_box(tile, fy, fx)
        assert weight.shape == (bottom - top, right - left)
        assert (weight > 0).all()
        total[top:bottom, left:right] += weight
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_blend_weights_fall_off_towards_interior_edges_only() -> None:
    tiles = [Tile(0, 0, 600, 2), Tile(0, 400, 600, 2)]  # two windows side by side, 200 px overlap
    left, right = blend_weights(tiles, (600, 1000), (600, 1000), 0.25)
    assert left[300, 0] == pytest.approx(1.0)  # image border: full weight
    assert left[300, 599] < 0.01 and right[300, 0] < 0.01  # the other window takes over across the overlap
    assert left[300, 400] > left[300, 500] > left[300, 590]


def test_gating_stops_a_tile_from_adding_an_object_the_global_pass_does_not_see() -> None:
    height = width = 1000
    options = TileOptions(scales=(2,), global_weight=0.0, gate_margin=1.0)
    tiles = plan_tiles(height, width, options, tile_size=TILE)
    global_logits = torch.full((1, 352, 352), -8.0)
    global_logits[:, 16:80, 16:80] = 8.0  # the global pass sees an object in the top-left corner only
    tile_logits = torch.full((len(tiles), 1, 352, 352), 8.0)  # every tile claims the whole window is the object
    fused = fuse(global_logits, tile_logits, tiles, (height, width), options, tile_size=TILE, token_grid=22)
    probability = fused.sigmoid()[0]
    h, w = probability.shape
    # Far from the global object (beyond the one-token gate margin) the tiles' claim is suppressed...
    assert probability[h // 2 :, w // 2 :].max() < 0.01
    # ...while inside it the tiles keep their confident answer.
    assert probability[: round(0.15 * h), : round(0.15 * w)].min() > 0.99


def test_tiles_sharpen_an_edge_the_global_pass_sees() -> None:
    options = TileOptions(scales=(2,), global_weight=0.0)
    tiles = plan_tiles(1000, 1000, options, tile_size=TILE)
    global_logits = torch.zeros(1, 352, 352)  # undecided everywhere: p = 0.5
    tile_logits = torch.full((len(tiles), 1, 352, 352), -8.0)
    fused = fuse(global_logits, tile_logits, tiles, (1000, 1000), options, tile_size=TILE, token_grid=22)
    assert fused.sigmoid().max() < 0.01  # tiles may remove what the global pass was unsure about


@pytest.mark.parametrize("bad", [1, 0, (2, 1), (), 2.5, "2"])
def test_bad_scales_are_refused(bad: object) -> None:
    with pytest.raises((ValueError, TypeError), match="scale|tiles"):
        TileOptions.parse(bad)


@pytest.mark.parametrize(("field", "value"), [("overlap", -0.1), ("overlap", 0.95), ("global_weight", 1.0), ("gate_margin", -1)])
def test_bad_tile_options_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        TileOptions(**{field: value})


def test_a_352_image_gives_exactly_the_global_result(predictor: Predictor) -> None:
    image = photo("astronaut")[:352, :352]
    predictor.set_image(image)
    plain = predictor.predict(["a face", "a flag"], negative="sky")
    tiled = predictor.predict(["a face", "a flag"], negative="sky", tiles=(2, 4))
    assert torch.equal(plain.probabilities, tiled.probabilities)
    [batched] = predictor.predict_batch([image], ["a face", "a flag"], negative="sky", tiles=True)
    assert torch.equal(plain.probabilities, batched.probabilities)


def test_tiled_prediction_on_a_large_odd_sized_image(predictor: Predictor) -> None:
    image = np.asarray(
        __import__("PIL.Image", fromlist=["Image"]).fromarray(photo("coffee")).resize((1001, 757))
    )
    predictor.set_image(image)
    plain = predictor.predict(["a cup", "a spoon"], negative="table")
    tiled = predictor.predict(["a cup", "a spoon"], negative="table", tiles=True)
    assert tiled.probabilities.shape == plain.probabilities.shape == (2, 757, 1001)
    assert 0.0 <= float(tiled.probabilities.min()) and float(tiled.probabilities.max()) <= 1.0
    assert not torch.equal(tiled.probabilities, plain.probabilities)  # the tiles did contribute
    assert tiled.label_map().shape == (757, 1001) and tiled.union().shape == (757, 1001)
    # The batch path gives the same tiled answer as set_image + predict.
    [batched] = predictor.predict_batch([image], ["a cup", "a spoon"], negative="table", tiles=True)
    torch.testing.assert_close(batched.probabilities, tiled.probabilities, atol=1e-5, rtol=0)
