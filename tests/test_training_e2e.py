"""End to end on the CPU: a tiny model trained on synthetic PhraseCut-format data clearly beats its untrained self.

Synthetic scenes of coloured shapes are written in the official PhraseCut layout, read back by the PhraseCut
reader and PhraseCut+ sampler, and a decoder on a frozen random CLIP is trained for 500 steps (about half a
minute on one core). Held-out test images are scored with text prompts before and after training.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import clipseg
from clipseg.data.synthetic import write_phrasecut
from clipseg.training.config import TrainConfig
from clipseg.training.trainer import Trainer
from clipseg.training.validation import evaluate

# A random CLIP can still tell prompts apart: distinct token sequences get distinct text embeddings.
ARCHITECTURE = {
    "vision": {"width": 64, "layers": 3, "heads": 4, "mlp_width": 128, "patch_size": 8, "image_size": 64, "output_dim": 64},
    "text": {"width": 64, "layers": 2, "heads": 2, "mlp_width": 128, "output_dim": 64},
    "decoder": {"reduce_dim": 64, "heads": 4, "mlp_width": 128, "extract_layers": [1, 2]},
}


@pytest.fixture
def one_thread():
    # Tiny ops gain nothing from a second thread, and spinning threads slow to a crawl on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_beats_the_untrained_model_on_held_out_images(tmp_path: Path, one_thread: None) -> None:
    root = write_phrasecut(tmp_path / "data", 300, seed=0, size=(64, 64))
    config = TrainConfig.from_dict({
        "name": "e2e",
        "model": {"clip": "random", "architecture": ARCHITECTURE, "dropout": 0.0},
        "data": {"root": str(root), "val": "test", "image_size": 64, "prompt_templates": "fixed",
                 "with_visual": False, "negative_prob": 0.2, "num_workers": 1},
        "optim": {"batch_size": 16, "max_iterations": 500, "lr": 1e-3, "lr_min": 1e-4, "precision": "fp32"},
        "run": {"output_dir": str(tmp_path / "run"), "device": "cpu", "log_every": 50, "checkpoint_every": 500,
                "val_batch_size": 32, "progress": False},
    })
    trainer = Trainer(config)
    before = trainer.validate()
    result = trainer.train()
    after = result.validation

    iou_before, _ = before.scores.best("iou_fg")
    iou_after, threshold = after.scores.best("iou_fg")
    print(f"\nheld-out IoU_FG (best threshold): {iou_before:.3f} untrained -> {iou_after:.3f} trained (t={threshold:.2f}); "
          f"AP {before.scores.ap:.3f} -> {after.scores.ap:.3f}; {after.samples} test samples")
    assert iou_after - iou_before >= 0.3
    assert after.scores.ap - before.scores.ap >= 0.3
    assert after.loss < before.loss

    # The exported model is the trained one.
    exported = clipseg.load_model(result.model_dir)
    reloaded = evaluate(exported, trainer.val_dataset, batch_size=32)
    assert reloaded.scores.best("iou_fg")[0] == pytest.approx(iou_after, abs=1e-6)
