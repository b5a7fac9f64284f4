"""Shared pieces of the training tests: tiny random-CLIP configs and small in-memory datasets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from clipseg.data.phrasecut_plus import PhraseCutPlus
from clipseg.data.synthetic import render_scene
from clipseg.training.config import TrainConfig

IMAGE_SIZE = 32

# A random CLIP small enough that a training step takes milliseconds: 4x4 patch grid, two vision blocks.
TINY_ARCHITECTURE: dict[str, Any] = {
    "vision": {"width": 32, "layers": 2, "heads": 2, "mlp_width": 64, "patch_size": 8, "image_size": 32, "output_dim": 32},
    "text": {"width": 32, "layers": 1, "heads": 2, "mlp_width": 64, "output_dim": 32},
    "decoder": {"reduce_dim": 16, "heads": 2, "mlp_width": 32, "extract_layers": [1]},
}


def tiny_train_config(output_dir: Path, **sections: dict[str, Any]) -> TrainConfig:
    """A fast CPU training config on the tiny random CLIP; `sections` update the model/optim/run/data sections."""
    data: dict[str, Any] = {
        "name": "tiny",
        "model": {"clip": "random", "architecture": TINY_ARCHITECTURE},
        "data": {"image_size": IMAGE_SIZE},
        "optim": {"batch_size": 4, "max_iterations": 6, "precision": "fp32"},
        "run": {"output_dir": str(output_dir), "device": "cpu", "log_every": 1, "checkpoint_every": 3, "progress": False},
    }
    for name, values in sections.items():
        data[name] = {**data[name], **values}
    return TrainConfig.from_dict(data)


class ShapesSource:
    """An in-memory referring source (the `PhraseCutPlus` protocol): one sample per shape of rendered scenes."""

    def __init__(self, n_scenes: int, *, seed: int = 0, size: int = IMAGE_SIZE) -> None:
        rng = np.random.default_rng(seed)
        self.samples: list[tuple[Image.Image, np.ndarray, str]] = []
        for _ in range(n_scenes):
            scene = render_scene(rng, size=(size, size), n_shapes=(1, 2), colours=("red", "blue"))
            self.samples += [(scene.image, shape.mask, shape.phrase) for shape in scene.shapes]

    @property
    def phrases(self) -> list[str]:
        return [phrase for _, _, phrase in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        return self.samples[index][0]

    def load_mask(self, index: int) -> np.ndarray:
        return self.samples[index][1]


def shapes_dataset(n_scenes: int = 12, *, seed: int = 0, with_visual: bool = True) -> PhraseCutPlus:
    """PhraseCut+ samples (negatives, supports, text weights) of rendered scenes."""
    return PhraseCutPlus(ShapesSource(n_scenes, seed=seed), image_size=IMAGE_SIZE, with_visual=with_visual)


class SimulatedCrash(Exception):
    """Raised by `CrashingDataset` to stand in for a killed process."""


class CrashingDataset(Dataset):
    """Wraps a dataset and raises `SimulatedCrash` once `items_before_crash` items have been read."""

    def __init__(self, dataset: PhraseCutPlus, items_before_crash: int) -> None:
        self.dataset = dataset
        self.remaining = items_before_crash

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.remaining == 0:
            raise SimulatedCrash("simulated crash")
        self.remaining -= 1
        return self.dataset[index]


class PoisonedDataset(Dataset):
    """Wraps a dataset; once `poisoned` is set, images are all NaN (as a corrupt file could decode)."""

    def __init__(self, dataset: PhraseCutPlus) -> None:
        self.dataset = dataset
        self.poisoned = False

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.dataset[index])
        if self.poisoned:
            sample["image"] = torch.full_like(sample["image"], float("nan"))
        return sample


def distributed_worker(rank: int, world_size: int, port: int, output_dir: str, result_file: str) -> None:
    """One process of a gloo run (started by `torch.multiprocessing.spawn`); rank 0 saves the decoder weights."""
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world_size),
         "LOCAL_RANK": str(rank)}
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    from clipseg.training.trainer import Trainer

    try:
        config = tiny_train_config(Path(output_dir), model={"dropout": 0.0})
        trainer = Trainer(config, train_dataset=shapes_dataset())
        trainer.train()
        if rank == 0:
            torch.save(trainer.model.decoder.state_dict(), result_file)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
