"""`clipseg train` builds the paper's baselines like CLIPSeg (`model.kind`): CLIP-Deconv and ViTSeg train through the
same trainer, only their decoder changes, and the exported model loads as the baseline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_evaluation_baselines import _hf_vit, _timm_layout
from training_fixtures import TINY_ARCHITECTURE, shapes_dataset, tiny_train_config

from clipseg import load_model
from clipseg.model.baselines import CLIPDeconv, ViTSeg
from clipseg.testing import random_model, tiny_config
from clipseg.training.config import TrainConfig
from clipseg.training.trainer import Trainer


pytestmark = pytest.mark.usefixtures("single_thread")


def _train(config: TrainConfig, dataset) -> tuple[Trainer, dict[str, torch.Tensor]]:
    trainer = Trainer(config, train_dataset=dataset)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    return trainer, before


def test_clip_deconv_trains_its_head_only_and_exports(tmp_path: Path):
    architecture = {k: v for k, v in TINY_ARCHITECTURE.items() if k != "decoder"} | {"decoder": {"reduce_dim": 8, "extract_layers": [1]}}
    config = tiny_train_config(
        tmp_path / "run",
        model={"kind": "clip-deconv", "reduce2_dim": 6, "architecture": architecture},
        optim={"max_iterations": 2},
    )
    trainer, before = _train(config, shapes_dataset(4))
    model = trainer.model
    assert isinstance(model, CLIPDeconv)
    assert model.config.decoder.extract_layers == (1,)  # the default, block 9, is checked in test_training_configs
    assert model.decoder.reduce2[0].out_features == 6 and model.decoder.reduce.out_features == 8
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k].cpu(), before[k].cpu())}
    assert changed and all(k.startswith("decoder.") for k in changed)
    loaded = load_model(tmp_path / "run" / "model")
    assert isinstance(loaded, CLIPDeconv) and loaded.decoder.reduce2[0].out_features == 6


def test_vitseg_trains_on_a_timm_vit_and_clips_text_tower(tmp_path: Path):
    vit_file = tmp_path / "vit.safetensors"
    save_file(_timm_layout(_hf_vit(width=64, layers=3, image_size=48).state_dict()), vit_file)
    clip_model = random_model(tiny_config(), seed=1)
    openai_state = {k.removeprefix("text."): v for k, v in clip_model.state_dict().items() if not k.startswith("decoder.")}
    clip_file = tmp_path / "clip.safetensors"
    save_file(openai_state, clip_file)
    config = tiny_train_config(
        tmp_path / "run",
        model={"kind": "vitseg", "backbone": str(vit_file), "clip": str(clip_file),
               "architecture": {"decoder": {"reduce_dim": 16, "heads": 2, "mlp_width": 32, "extract_layers": [1, 2]}}},
        optim={"max_iterations": 2},
    )
    trainer, before = _train(config, shapes_dataset(4))
    model = trainer.model
    assert isinstance(model, ViTSeg) and model.config.vision.image_size == 48
    for name, value in clip_model.state_dict().items():
        if name.startswith("text."):
            assert torch.equal(model.state_dict()[name].cpu(), value), name
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k].cpu(), before[k].cpu())}
    assert changed and all(k.startswith("decoder.") for k in changed)
    assert isinstance(load_model(tmp_path / "run" / "model"), ViTSeg)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"kind": "vitseg"}, "model.backbone: set ViTSeg's timm ViT checkpoint"),
        ({"kind": "clipseg", "backbone": "vit.safetensors"}, "model.backbone: .*only with model.kind: vitseg"),
        ({"kind": "clip-deconv", "init": "somewhere"}, "model.kind: comes from the checkpoint"),
        ({"kind": "unet"}, "model.kind"),
    ],
)
def test_baseline_settings_errors_name_the_key(tmp_path: Path, model, message):
    with pytest.raises(ValueError, match=message):
        config = tiny_train_config(tmp_path / "run", model={"architecture": {}} | model)
        Trainer(config, train_dataset=shapes_dataset(2))
