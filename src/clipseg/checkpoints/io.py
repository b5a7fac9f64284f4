"""Read weight files without running code from them, and write safetensors files atomically.

Supported inputs: safetensors files, ``torch.save`` checkpoints (zip or legacy pickle; read with
``weights_only=True``) and TorchScript archives such as OpenAI's ``ViT-B-16.pt`` (read by the restricted reader
in :mod:`clipseg.checkpoints.torchscript`).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError

from ..fileio import UnreadableFileError, atomic_path, read_limited_bytes
from ..messages import first_line
from .errors import SAFETY_MESSAGE, CheckpointError
from .torchscript import read_torchscript_state_dict

__all__ = ["declared_state_dict", "load_torch_file", "read_state_dict", "write_safetensors"]

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_PICKLE_PROTO = 0x80
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` state dict from a weight file without executing code from it.

    Accepts ``.safetensors`` files, ``torch.save`` checkpoints (``.pth``/``.pt``/``.bin``/``.ckpt``; common
    wrappers such as ``{"state_dict": ...}`` are unwrapped and ``module.``/``_orig_mod.`` prefixes removed) and
    TorchScript archives such as OpenAI's CLIP ``ViT-B-16.pt`` (keys as ``torch.jit.load(path).state_dict()``).
    Tensors are returned on the CPU in their stored dtype.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is not a readable weight file or would need unsafe unpickling.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"cannot read checkpoint {path}: it is a directory, expected a weight file")
    head = read_state_dict_head(path)
    if not head:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
    if head[:4] in _ZIP_MAGIC:
        return _read_zip_checkpoint(path)
    # Before the pickle check: a safetensors header length can start with the pickle protocol byte.
    if path.suffix == ".safetensors" or _looks_like_safetensors(head):
        return _read_safetensors(path)
    if head[0] == _PICKLE_PROTO:
        return _read_torch_checkpoint(path)
    raise CheckpointError(f"cannot read checkpoint {path}: not a safetensors or PyTorch checkpoint")


# safetensors dtype names -> torch dtypes (the ones torch can hold).
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def declared_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The tensors a safetensors file declares in its header, as meta tensors (name, shape, dtype; no data is
    read or allocated), so that shapes can be checked against an architecture before loading. None for other
    formats, whose shapes are only known once they are read."""
    path = Path(path)
    if read_state_dict_head(path)[:4] in _ZIP_MAGIC:
        return None
    if not (path.suffix == ".safetensors" or _looks_like_safetensors(read_state_dict_head(path))):
        return None
    try:
        with safetensors.safe_open(path, framework="pt") as file:
            declared = {}
            for name in file.keys():
                view = file.get_slice(name)
                dtype = _SAFETENSORS_DTYPES.get(view.get_dtype())
                if dtype is None:
                    raise CheckpointError(
                        f"cannot read checkpoint {path}: tensor {name} has the unsupported dtype {view.get_dtype()}"
                    )
                declared[name] = torch.empty(view.get_shape(), dtype=dtype, device="meta")
    except SafetensorError as error:
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated or corrupt safetensors file ({first_line(error)})"
        ) from None
    return declared


def read_state_dict_head(path: Path) -> bytes:
    """The first bytes of a weight file, which tell its format (a regular file is required)."""
    try:
        return read_limited_bytes(path, 9, "weight file", allow_larger=True)
    except UnreadableFileError as error:
        raise CheckpointError(f"cannot read checkpoint {error}") from None


def write_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write ``state`` to a safetensors file atomically (temporary file in the same directory, then rename).

    Tensors are detached, moved to the CPU and made contiguous; tensors that share storage with another
    entry are cloned, since safetensors stores each tensor separately.
    """
    path = Path(path)
    tensors = _independent_contiguous_tensors(state)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory does not exist: {path.parent}")
    with atomic_path(path) as temporary:
        safetensors.torch.save_file(tensors, temporary, metadata={"format": "pt"})


def _independent_contiguous_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping):
        raise ValueError(f"state must be a mapping of names to tensors, got {type(state).__name__}")
    tensors: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ValueError(f"state entry {name!r} must map a str to a torch.Tensor, got {type(tensor).__name__}")
        tensor = tensor.detach().cpu()
        if tensor.untyped_storage().data_ptr() in seen_storages or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen_storages.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return tensors


def _looks_like_safetensors(head: bytes) -> bool:
    # A safetensors file starts with the little-endian u64 length of a JSON header, then the header's "{".
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except SafetensorError as error:
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated or corrupt safetensors file ({first_line(error)})"
        ) from None


def _read_zip_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [name for name in names if name.count("/") == 1 and name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(
                    f"cannot read checkpoint {path}: a zip archive without a single data.pkl, "
                    "not a PyTorch checkpoint"
                )
            prefix = pickles[0][: -len("/data.pkl")]
            if f"{prefix}/constants.pkl" in names:
                return read_torchscript_state_dict(path, archive, prefix)
    except (zipfile.BadZipFile, EOFError) as error:
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated or corrupt zip archive ({first_line(error)})"
        ) from None
    return _read_torch_checkpoint(path)


def _read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    return _flat_state_dict(load_torch_file(path), path)


def load_torch_file(path: str | os.PathLike) -> Any:
    """A ``torch.save`` file read with ``weights_only=True`` (tensors and primitive containers only). A file that
    would need unsafe unpickling, or is corrupt, raises a one-line CheckpointError naming it; torch's advice to
    retry with ``weights_only=False`` is never passed on."""
    path = Path(path)
    read_state_dict_head(path)  # a regular file, not a FIFO or device
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise CheckpointError(
                f"cannot read checkpoint {path}: " + SAFETY_MESSAGE.format(what=_refused_global(error))
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt pickle ({first_line(error)})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated or corrupt PyTorch checkpoint ({first_line(error)})"
        ) from None


def _refused_global(error: Exception) -> str:
    # torch names the refused global as "... GLOBAL posix.system whose module ..." or "GLOBAL x.y was not ...".
    match = re.search(r"GLOBAL\s+([A-Za-z_][\w.]*)", str(error))
    return match.group(1) if match else "unsupported pickle content"


def _flat_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    # Unwrap containers such as {"state_dict": ...} or {"model": {"state_dict": ...}} (at most two levels).
    for _ in range(2):
        if isinstance(loaded, Mapping):
            inner = next((loaded[key] for key in _CONTAINER_KEYS if isinstance(loaded.get(key), Mapping)), None)
            if inner is not None:
                loaded = inner
    if not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"cannot read checkpoint {path}: it holds a {type(loaded).__name__}, not a state dict of tensors"
        )
    tensors = {key: value for key, value in loaded.items() if isinstance(key, str) and isinstance(value, torch.Tensor)}
    if not tensors:
        keys = ", ".join(repr(key) for key in list(loaded)[:8])
        raise CheckpointError(f"cannot read checkpoint {path}: no tensors found (top-level keys: {keys})")
    return _strip_wrapper_prefixes(tensors, path)


def _strip_wrapper_prefixes(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Undo the key changes of DistributedDataParallel (``module.``) and torch.compile (``_orig_mod.``)."""
    names = {key: ".".join(part for part in key.split(".") if part != "_orig_mod") for key in tensors}
    while all(name.startswith("module.") for name in names.values()):
        names = {key: name[len("module.") :] for key, name in names.items()}
    if len(set(names.values())) != len(names):
        raise CheckpointError(
            f"cannot read checkpoint {path}: key names collide after removing 'module.'/'_orig_mod.' prefixes"
        )
    return {names[key]: tensor for key, tensor in tensors.items()}
