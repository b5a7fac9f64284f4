"""The shipped training configs against the released experiments (experiments/*.yaml of the original repository):
values transcribed by hand from those files, and the samples the configs produce."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_fixtures import ShapesSource

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

