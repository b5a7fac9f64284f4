"""The shipped training configs against the released experiments (experiments/*.yaml of the original repository):
values transcribed by hand from those files, and the samples the configs produce."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_fixtures import ShapesSource

from clipseg.data.phrasecut_plus import PhraseCutPlus
from clipseg.training.config import load_config
from clipseg.training.data import build_training_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"

# The released text-only runs (`mix: False`: rd64-uni-novis / rd64-no-visual, rd128-vit16-phrasecut, and the
# PhraseCut-only CLIPSeg (PC)) pass data_x[1], the raw phrase, to the model; templates are drawn only when mixing.
TEXT_ONLY = ("rd64-pc", "rd128-pc", "ablation-no-visual")


@pytest.mark.parametrize("name", TEXT_ONLY)
def test_text_only_runs_feed_the_raw_phrase(name, monkeypatch):
    config = load_config(CONFIGS / f"{name}.yaml", ["data.root=unused", "data.image_size=32"])
    assert not config.data.with_visual and config.data.prompt_templates == "plain"
    source = ShapesSource(6)
    monkeypatch.setattr("clipseg.training.data.referring_source", lambda settings, validation=False: source)
    dataset = build_training_dataset(config.data, seed=0)
    for index in range(len(dataset)):
        sample = dataset[index]
        # the phrase itself (a negative swaps in another phrase of the dataset, still without a template)
        assert sample["text"] in set(source.phrases)
        assert sample["text_weight"] == 1.0


def test_every_text_only_config_is_listed():
    """Any config without visual supports must use the raw phrase (the released mix: False behaviour)."""
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = load_config(path)
        if not config.data.with_visual:
            assert config.data.prompt_templates == "plain", path.name
        else:
            assert config.data.prompt_templates == "shuffle+", path.name



# --- items 12-14: the released COCO-20i, Pascal-5i "PC" and baseline runs ----------------------------------------
# Each row: the run's values as experiments/coco.yaml, pascal_1shot.yaml and phrasecut.yaml set them (their
# `configuration` block plus the individual entry; mix: True with no mix_text_max means w ~ U(0, 1); the HSNet
# COCO loader resizes whole images; CLIPDenseBaseline reads block 9 with reduce_dim = reduce2_dim = 64).
COMMON = {"optim.batch_size": 64, "optim.lr_min": 0.0001, "data.image_size": 352, "data.mix_text_min": 0.0}


def _released(fold: int) -> dict[str, dict]:
    coco = {"data.format": "coco", "data.exclude_categories": (f"coco-20i-{fold}",), "data.crop": False,
            "optim.max_iterations": 7000, "data.with_visual": True, "data.mix_text_max": 1.0,
            "data.prompt_templates": "shuffle+"}
    pascal = {"data.format": "phrasecut", "data.remove_classes": f"pascal-5i-{fold}", "data.with_visual": True,
              "optim.max_iterations": 20000, "data.crop": True}
    return {
        f"rd64-coco-20i-{fold}": coco | {"model.kind": "clipseg", "data.negative_prob": 0.0, "optim.lr": 0.001},
        f"rd64-coco-20i-neg-{fold}": coco | {"model.kind": "clipseg", "data.negative_prob": 0.2, "optim.lr": 0.001},
        f"clip-deconv-coco-20i-{fold}": coco
        | {"model.kind": "clip-deconv", "model.reduce2_dim": 64, "data.negative_prob": 0.2, "optim.lr": 0.001},
        f"vitseg-coco-20i-{fold}": coco | {"model.kind": "vitseg", "data.negative_prob": 0.0, "optim.lr": 0.0001},
        f"rd64-pc-pascal-5i-{fold}": pascal
        | {"model.kind": "clipseg", "data.negative_prob": 0.0, "data.mix_text_max": 1.0, "optim.lr": 0.001},
        f"clip-deconv-pascal-5i-{fold}": pascal
        | {"model.kind": "clip-deconv", "data.negative_prob": 0.0, "data.mix_text_max": 1.0, "optim.lr": 0.001},
        f"vitseg-pascal-5i-{fold}": pascal
        | {"model.kind": "vitseg", "data.negative_prob": 0.2, "data.mix_text_max": 0.5, "optim.lr": 0.0001},
    }


RELEASED = {name: values for fold in range(4) for name, values in _released(fold).items()} | {
    "clip-deconv-pc": {"model.kind": "clip-deconv", "model.reduce2_dim": 64, "data.with_visual": False,
                       "data.negative_prob": 0.0, "data.prompt_templates": "plain", "optim.lr": 0.001},
    "vitseg-pc": {"model.kind": "vitseg", "data.with_visual": False, "data.negative_prob": 0.0,
                  "data.prompt_templates": "plain", "optim.lr": 0.0001},
    "vitseg-pc-plus": {"model.kind": "vitseg", "data.with_visual": True, "data.only_visual": True,
                       "data.negative_prob": 0.2, "optim.lr": 0.0003, "optim.max_iterations": 20000},
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_configs_reproduce_the_released_runs(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.name == name
    for key, expected in (COMMON | RELEASED[name]).items():
        section, field = key.split(".")
        assert getattr(getattr(config, section), field) == expected, (name, key)
    if config.model.kind == "clip-deconv":
        from clipseg.training.model import architecture_config

        decoder = architecture_config(config.model).decoder
        assert (decoder.extract_layers, decoder.reduce_dim) == ((9,), 64)


def test_coco_folds_hold_their_classes_out(tmp_path):
    from clipseg.data.synthetic_benchmarks import write_coco2014
    from clipseg.training.config import DataSettings
    from clipseg.training.data import referring_source

    root = write_coco2014(tmp_path / "coco", 30, size=(32, 32), split="train2014")
    annotations = str(root / "annotations" / "instances_train2014.json")
    every = referring_source(DataSettings(format="coco", root=annotations, image_dir=str(root / "train2014")))
    categories = json.loads(Path(annotations).read_text())["categories"]
    by_id = sorted(categories, key=lambda c: c["id"])
    for fold in range(4):
        held_out = {by_id[fold + 4 * k]["name"] for k in range(20)}  # HSNet: class indices fold, fold + 4, ...
        settings = DataSettings(
            format="coco", root=annotations, image_dir=str(root / "train2014"), exclude_categories=(f"coco-20i-{fold}",)
        )
        kept = referring_source(settings)
        assert set(kept.phrases) == {p for p in every.phrases if p not in held_out}
        assert len(kept) == sum(p not in held_out for p in every.phrases)
    named = DataSettings(format="coco", root=annotations, image_dir=str(root / "train2014"),
                         exclude_categories=("person", "bicycle"))
    assert {"person", "bicycle"}.isdisjoint(referring_source(named).phrases)
    with pytest.raises(ValueError, match="no category named 'unicorn'"):
        referring_source(DataSettings(format="coco", root=annotations, image_dir=named.image_dir,
                                      exclude_categories=("unicorn",)))
    with pytest.raises(ValueError, match="data.exclude_categories: .*only with data.format: coco"):
        load_config(CONFIGS / "rd64-pc.yaml", ["data.exclude_categories=[person]"])


def test_only_visual_samples_are_conditioned_on_the_support_alone():
    source = ShapesSource(12)
    counts = {p: source.phrases.count(p) for p in source.phrases}
    dataset = PhraseCutPlus(source, image_size=32, negative_prob=0.2, with_visual=True, only_visual=True)
    assert len(dataset) == sum(1 for p in source.phrases if counts[p] > 1) < len(source)
    for index in range(len(dataset)):
        plan = dataset.plan(index)
        assert counts[source.phrases[plan.source_index]] > 1 and plan.text_weight == 0.0
