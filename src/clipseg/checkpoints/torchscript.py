"""A restricted reader for TorchScript module archives such as OpenAI's CLIP ``ViT-B-16.pt``.

Only tensors are rebuilt: module objects become inert records of their attributes, and the archive's ``code/``
is parsed with :mod:`ast` (never compiled or run) to learn which attributes are parameters and buffers. Nothing
from torch's own unpickling helpers is reachable from the file.
"""

from __future__ import annotations

import ast
import pickle
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..messages import first_line
from .errors import SAFETY_MESSAGE, CheckpointError

__all__ = ["read_torchscript_state_dict"]


def read_torchscript_state_dict(path: Path, archive: zipfile.ZipFile, prefix: str) -> dict[str, torch.Tensor]:
    """The parameters and buffers of the TorchScript module in ``archive`` (whose records live under ``prefix``),
    named as ``torch.jit.load(path).state_dict()`` names them. Raises CheckpointError naming ``path``."""
    return _TorchScriptArchive(path, archive, prefix).state_dict()


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
                raise self._error(SAFETY_MESSAGE.format(what=str(error))) from None
            # The pickle is untrusted input: any other failure while rebuilding it means the file is corrupt.
            except Exception as error:
                raise self._error(f"corrupt data.pkl ({type(error).__name__}: {first_line(error)})") from None

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
                raise self._error(f"tensor data {name} is corrupt ({first_line(error)})") from None
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
            raise self._error(f"cannot parse {source_name} ({first_line(error)})") from None
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
