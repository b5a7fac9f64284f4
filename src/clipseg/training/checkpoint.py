"""Training checkpoints: self-describing directories written atomically, read without unpickling code.

``<run>/checkpoints/step-00001000/`` holds

- ``trainable.safetensors``: the trained weights (the decoder; CLIP is frozen and rebuilt from the config),
- ``training_state.pt``: optimiser, LR schedule, loss scaler and every process's RNG states — tensors and
  primitive containers only, read back with ``torch.load(weights_only=True)``,
- ``checkpoint.json``: format, step, the training config, the model config and a fingerprint of the frozen
  weights (so resuming on different CLIP weights is refused).

The directory is assembled under a hidden temporary name and renamed into place, so a ``step-*`` directory is
always complete: a crash while saving leaves the previous checkpoint as the newest one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints.errors import CheckpointError
from ..checkpoints.io import load_torch_file, read_state_dict, write_safetensors
from ..fileio import MAX_CONFIG_BYTES, atomic_write, read_json_file

FORMAT = "clipseg-training-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "training_state.pt"
METADATA_FILE = "checkpoint.json"
CHECKPOINTS_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory on disk and its metadata (``checkpoint.json``)."""

    path: Path
    metadata: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.metadata["step"])

    def weights(self) -> dict[str, torch.Tensor]:
        """The trained weights (model state-dict keys)."""
        return read_state_dict(self.path / WEIGHTS_FILE)

    def training_state(self) -> dict[str, Any]:
        """Optimiser, scheduler, scaler and RNG states (read without unpickling code: a file that holds anything
        else is refused with a CheckpointError naming it)."""
        state = load_torch_file(self.path / STATE_FILE)
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.path / STATE_FILE}: holds a {type(state).__name__}, expected a dict of states")
        return state


def step_directory_name(step: int) -> str:
    return f"step-{step:08d}"


def write_checkpoint(
    checkpoints_dir: Path,
    step: int,
    *,
    weights: dict[str, torch.Tensor],
    training_state: dict[str, Any],
    metadata: dict[str, Any],
) -> Path:
    """Write checkpoint `step` into `checkpoints_dir` atomically and return its directory."""
    final = checkpoints_dir / step_directory_name(step)
    with staged_directory(final) as staging:
        write_safetensors(weights, staging / WEIGHTS_FILE)
        with atomic_write(staging / STATE_FILE) as file:
            torch.save(training_state, file)
        document = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, **metadata}
        with atomic_write(staging / METADATA_FILE, "w") as file:
            json.dump(document, file, indent=2)
    return final


@contextlib.contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """A hidden empty directory beside `final` to fill; once the block succeeds it replaces `final` (by renames
    only), on any error it is deleted and `final` is left as it was."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        yield staging
        install_directory(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def install_directory(staging: Path, final: Path) -> None:
    """Move a fully written directory into place, replacing an existing one (renames only, same filesystem)."""
    if final.exists():
        retired = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old."))
        os.replace(final, retired / final.name)
        os.replace(staging, final)
        shutil.rmtree(retired)
    else:
        os.replace(staging, final)


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoint directories in `checkpoints_dir`, oldest step first."""
    if not checkpoints_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoints_dir.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


def prune_checkpoints(checkpoints_dir: Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints (keep 0: delete none) and leftovers of interrupted saves."""
    for leftover in checkpoints_dir.glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep > 0:
        for path in list_checkpoints(checkpoints_dir)[:-keep]:
            shutil.rmtree(path)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint: a ``step-*`` directory, or a run (or its ``checkpoints``) directory for the newest one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not (path / METADATA_FILE).is_file():
        candidates = list_checkpoints(path / CHECKPOINTS_DIR) or list_checkpoints(path)
        if not candidates:
            raise FileNotFoundError(f"{path}: not a training checkpoint and holds no checkpoints/step-* directory")
        path = candidates[-1]
    metadata = read_json_file(path / METADATA_FILE, MAX_CONFIG_BYTES, "checkpoint metadata file")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("step"), int):
        raise ValueError(f"{path / METADATA_FILE}: expected a JSON object with an integer step")
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not a clipseg training checkpoint (format {metadata.get('format')!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format version {metadata.get('format_version')} is not supported "
            f"(this clipseg reads version {FORMAT_VERSION})"
        )
    for name in (WEIGHTS_FILE, STATE_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: incomplete checkpoint, {name} is missing")
    return Checkpoint(path=path, metadata=metadata)


def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's RNG states as tensors and primitive containers (loadable with weights_only=True)."""
    version, internal, gauss_next = random.getstate()
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng(state: Mapping[str, Any], device: torch.device) -> None:
    """Set this process's RNG states to those `capture_rng` returned."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])
