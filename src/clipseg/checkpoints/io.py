"""Read weight files without running code from them, and write safetensors files atomically.

Supported inputs: safetensors files, ``torch.save`` checkpoints (zip or legacy pickle; read with
``weights_only=True``) and TorchScript archives such as OpenAI's ``ViT-B-16.pt``. TorchScript archives are
read by a restricted unpickler that only rebuilds tensors: module objects become inert records of their
attributes, and the archive's ``code/`` is parsed with :mod:`ast` (never compiled or run) to learn which
attributes are parameters and buffers.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError

from ..fileio import UnreadableFileError, atomic_path, read_limited_bytes

__all__ = ["CheckpointError", "declared_state_dict", "load_torch_file", "read_state_dict", "write_safetensors"]

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_PICKLE_PROTO = 0x80
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")
_SAFETY_MESSAGE = (
    "it references code or objects ({what}) that will not be unpickled for safety; no code from the file was run"
)


class CheckpointError(ValueError):
    """A weight file is unreadable: corrupt, truncated, of an unknown format, or unsafe to unpickle."""


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
            f"cannot read checkpoint {path}: truncated or corrupt safetensors file ({_first_line(error)})"
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
            f"cannot read checkpoint {path}: truncated or corrupt safetensors file ({_first_line(error)})"
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
                return _TorchScriptArchive(path, archive, prefix).state_dict()
    except (zipfile.BadZipFile, EOFError) as error:
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated or corrupt zip archive ({_first_line(error)})"
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
                f"cannot read checkpoint {path}: " + _SAFETY_MESSAGE.format(what=_refused_global(error))
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt pickle ({_first_line(error)})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated or corrupt PyTorch checkpoint ({_first_line(error)})"
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- TorchScript archives ---------------------------------------------------------------------------------

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


# Bounds of the module tree of a TorchScript archive (OpenAI's CLIP: depth 6, about 300 modules).
_MAX_MODULE_DEPTH = 64
_MAX_MODULES = 100_000
# PyTorch writes tensor data uncompressed; a compressed entry expanding more than this is refused as a bomb.
_MAX_COMPRESSION_RATIO = 100
# data.pkl and code/ files hold only the module structure (tens of KB for CLIP).
_MAX_METADATA_BYTES = 64 * 1024**2


class _ForbiddenGlobal(pickle.UnpicklingError):
    """Raised by the restricted unpickler for any global outside its allowlist."""


class _ScriptObject:
    """Inert stand-in for a pickled TorchScript object: it only keeps the state the pickle gives it."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state


@dataclass(frozen=True)
class _ClassDeclaration:
    is_module: bool
    parameters: frozenset[str]
    buffers: frozenset[str]


def _rebuild_tensor(
    storage: torch.Tensor, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_flags: Any
) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise TypeError("tensor data does not reference a storage")
    return storage.as_strided(size, stride, storage_offset)


def _rebuild_parameter(data: torch.Tensor, *_flags: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise TypeError("parameter data is not a tensor")
    return data


def _passthrough(value: Any, *_type_tag: Any) -> Any:
    return value


# Globals the TorchScript pickler writes around tensors and typed containers; each maps to an inert local
# function, so nothing from torch's own (general) unpickling helpers is reachable from the file.
_ALLOWED_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _passthrough,
    ("torch.jit._pickle", "build_intlist"): _passthrough,
    ("torch.jit._pickle", "build_doublelist"): _passthrough,
    ("torch.jit._pickle", "build_boollist"): _passthrough,
    ("torch.jit._pickle", "build_tensorlist"): _passthrough,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``: tensors are rebuilt, ``__torch__`` objects become records."""

    def __init__(self, file: Any, load_storage: Callable[[torch.dtype, str, int], torch.Tensor]) -> None:
        super().__init__(file)
        self._load_storage = load_storage
        self._script_classes: dict[str, type[_ScriptObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualified_name = f"{module}.{name}"
            if qualified_name not in self._script_classes:
                self._script_classes[qualified_name] = type(
                    "ScriptObject", (_ScriptObject,), {"qualified_name": qualified_name}
                )
            return self._script_classes[qualified_name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in _ALLOWED_FUNCTIONS:
            return _ALLOWED_FUNCTIONS[module, name]
        raise _ForbiddenGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"malformed storage reference {pid!r}")
        return self._load_storage(dtype, key, numel)


class _TorchScriptArchive:
    """Reads parameters and buffers of a TorchScript module archive without loading it as a module."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, prefix: str) -> None:
        self._path = path
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, torch.Tensor] = {}
        self._declarations: dict[str, _ClassDeclaration] = {}
        self._parsed_files: set[str] = set()

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_byte_order()
        root = self._unpickle_data()
        if not isinstance(root, _ScriptObject) or not self._declaration(root.qualified_name).is_module:
            raise self._error("data.pkl does not hold a TorchScript module")
        state: dict[str, torch.Tensor] = {}
        self._collect(root, state)
        if not state:
            raise self._error("the TorchScript module has no parameters or buffers")
        return state

    def _error(self, problem: str) -> CheckpointError:
        return CheckpointError(f"cannot read TorchScript checkpoint {self._path}: {problem}")

    def _check_byte_order(self) -> None:
        name = f"{self._prefix}/byteorder"
        if name in self._archive.namelist():
            stored = self._archive.read(self._small_entry(name)).decode("ascii", "replace").strip()
            if stored != sys.byteorder:
                raise self._error(f"tensors are stored {stored}-endian, this machine is {sys.byteorder}-endian")

    def _small_entry(self, name: str) -> zipfile.ZipInfo:
        info = self._archive.getinfo(name)
        if info.file_size > _MAX_METADATA_BYTES:
            raise self._error(f"{name} is {info.file_size:,} bytes; at most {_MAX_METADATA_BYTES:,} are expected")
        return info

    def _unpickle_data(self) -> Any:
        with self._archive.open(self._small_entry(f"{self._prefix}/data.pkl")) as data:
            try:
                return _RestrictedUnpickler(data, self._load_storage).load()
            except CheckpointError:
                raise
            except _ForbiddenGlobal as error:
                raise self._error(_SAFETY_MESSAGE.format(what=str(error))) from None
            # The pickle is untrusted input: any other failure while rebuilding it means the file is corrupt.
            except Exception as error:
                raise self._error(f"corrupt data.pkl ({type(error).__name__}: {_first_line(error)})") from None

    def _load_storage(self, dtype: torch.dtype, key: str, numel: int) -> torch.Tensor:
        if key not in self._storages:
            name = f"{self._prefix}/data/{key}"
            try:
                info = self._archive.getinfo(name)
            except KeyError:
                raise self._error(f"tensor data {name} is missing") from None
            nbytes = numel * dtype.itemsize
            if info.compress_type != zipfile.ZIP_STORED and info.file_size > _MAX_COMPRESSION_RATIO * max(1, info.compress_size):
                raise self._error(
                    f"tensor data {name} expands {info.file_size // max(1, info.compress_size)}-fold when "
                    "decompressed (a zip bomb?); PyTorch stores tensor data uncompressed"
                )
            if info.file_size != nbytes:
                raise self._error(f"tensor data {name} has {info.file_size} bytes, expected {nbytes}")
            buffer = torch.empty(nbytes, dtype=torch.uint8)
            try:
                with self._archive.open(info) as stored:
                    read = stored.readinto(buffer.numpy())
            except (zipfile.BadZipFile, EOFError) as error:
                raise self._error(f"tensor data {name} is corrupt ({_first_line(error)})") from None
            if read != nbytes:
                raise self._error(f"tensor data {name} is truncated")
            self._storages[key] = buffer.view(dtype)
        storage = self._storages[key]
        if storage.dtype != dtype:
            raise self._error(f"tensor data {key} is referenced with two dtypes")
        return storage

    def _declaration(self, qualified_name: str) -> _ClassDeclaration:
        module_name = qualified_name.rpartition(".")[0]
        source_name = f"{self._prefix}/code/{module_name.replace('.', '/')}.py"
        if source_name not in self._parsed_files:
            self._parsed_files.add(source_name)
            self._parse_declarations(source_name, module_name)
        if qualified_name not in self._declarations:
            raise self._error(f"no declaration of TorchScript class {qualified_name} in {source_name}")
        return self._declarations[qualified_name]

    def _parse_declarations(self, source_name: str, module_name: str) -> None:
        """Record which attributes each class declares as parameters/buffers (parsing only, nothing runs)."""
        if source_name not in self._archive.namelist():
            return
        source = self._archive.read(self._small_entry(source_name)).decode("utf-8", "replace")
        try:
            tree = ast.parse(source, filename=source_name)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
            raise self._error(f"cannot parse {source_name} ({_first_line(error)})") from None
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            lists = {"__parameters__": frozenset(), "__buffers__": frozenset()}
            for statement in node.body:
                if (
                    isinstance(statement, ast.Assign)
                    and len(statement.targets) == 1
                    and isinstance(statement.targets[0], ast.Name)
                    and statement.targets[0].id in lists
                ):
                    lists[statement.targets[0].id] = self._literal_names(statement.value, source_name)
            is_module = any(isinstance(base, ast.Name) and base.id == "Module" for base in node.bases)
            self._declarations[f"{module_name}.{node.name}"] = _ClassDeclaration(
                is_module, lists["__parameters__"], lists["__buffers__"]
            )

    def _literal_names(self, node: ast.expr, source_name: str) -> frozenset[str]:
        try:
            names = ast.literal_eval(node)
        except (ValueError, TypeError, RecursionError):
            names = None
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise self._error(f"malformed __parameters__/__buffers__ declaration in {source_name}")
        return frozenset(names)

    def _collect(self, root: _ScriptObject, state: dict[str, torch.Tensor]) -> None:
        """Walk the module tree depth-first in Module.state_dict() order (own parameters, own buffers, then each
        submodule). Each object is visited once: a module the pickle shares between parents (a graph, maybe
        cyclic, rather than a tree) keeps the name of its first path, so a small file cannot make the walk
        exponential; depth and module count are bounded as well."""
        visited: set[int] = set()
        stack: list[tuple[_ScriptObject, str, int]] = [(root, "", 0)]
        while stack:
            module, prefix, depth = stack.pop()
            if id(module) in visited:
                continue
            visited.add(id(module))
            if depth > _MAX_MODULE_DEPTH:
                raise self._error(f"the module tree is nested deeper than {_MAX_MODULE_DEPTH} levels")
            if len(visited) > _MAX_MODULES:
                raise self._error(f"the module tree has more than {_MAX_MODULES:,} modules")
            attributes = getattr(module, "state", None)
            if not isinstance(attributes, dict):
                raise self._error(f"module object {module.qualified_name} has no attribute dict")
            declaration = self._declaration(module.qualified_name)
            for declared in (declaration.parameters, declaration.buffers):
                for name, value in attributes.items():
                    if name in declared and isinstance(value, torch.Tensor):
                        # detach() drops any requires_grad/hook state the pickle may have set on the tensor.
                        state[prefix + name] = value.detach()
            children = [
                (value, f"{prefix}{name}.", depth + 1)
                for name, value in attributes.items()
                if isinstance(value, _ScriptObject) and self._declaration(value.qualified_name).is_module
            ]
            stack.extend(reversed(children))
