"""Reading weight files without running code from them, and atomic safetensors writing."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from clipseg.checkpoints.errors import CheckpointError
from clipseg.checkpoints.io import read_state_dict, write_safetensors

# The tests build TorchScript archives on purpose; torch 2.x marks the whole torch.jit API deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch\\.jit\\.:DeprecationWarning")


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int, context: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 2 * width))
        self.mlp.add_module("c_proj", nn.Linear(2 * width, width))
        # OpenAI CLIP keeps its attention mask as a plain tensor attribute, which is not part of the state dict.
        self.attn_mask = torch.zeros(context, context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=self.attn_mask.to(x.dtype))[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, heads: int, context: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(_ResidualBlock(width, heads, context), _ResidualBlock(width, heads, context))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class _Visual(nn.Module):
    def __init__(self, width: int = 8, patch: int = 4, grid: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, 2, grid * grid + 1)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, 4))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1(image).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


class _TinyClip(nn.Module):
    """Parameter names, dtypes and attribute kinds as in OpenAI's TorchScript CLIP archives."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = _Visual()
        self.token_embedding = nn.Embedding(10, 8)
        self.positional_embedding = nn.Parameter(torch.randn(5, 8))
        self.logit_scale = nn.Parameter(torch.ones([]))
        self.input_resolution = nn.Parameter(torch.tensor(8), requires_grad=False)
        self.register_buffer("token_scale", torch.ones(8))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        text = (self.token_embedding.weight[:5] + self.positional_embedding) * self.token_scale
        return self.logit_scale.exp() * self.visual(image) @ text[:4]


class _CreatesMarkerFile:
    """Unpickling this object runs code that creates a file: the classic malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture(scope="module")
def torchscript_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("torchscript")
    torch.manual_seed(0)
    model = _TinyClip().half().eval()
    image = torch.randn(1, 3, 8, 8, dtype=torch.float16)
    archives = {"scripted": directory / "scripted.pt", "traced": directory / "traced.pt"}
    torch.jit.save(torch.jit.script(model), archives["scripted"])
    with warnings.catch_warnings():  # tracing warns that TorchScript is deprecated and about shape checks
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, image), archives["traced"])
    return archives


def _assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert actual[name].shape == tensor.shape, name
        assert torch.equal(actual[name], tensor), name


def _assert_one_line_error(error: pytest.ExceptionInfo, path: Path, fragment: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    assert fragment in message


@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_torchscript_archive_matches_jit_state_dict(torchscript_archives: dict[str, Path], kind: str) -> None:
    path = torchscript_archives[kind]
    expected = torch.jit.load(path).state_dict()
    state = read_state_dict(path)
    _assert_same_state(state, expected)
    assert state["visual.conv1.weight"].dtype == torch.float16
    assert state["input_resolution"].dtype == torch.int64
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in state
    assert "visual.transformer.resblocks.1.mlp.c_proj.bias" in state
    assert not any(name.endswith("attn_mask") for name in state)


def test_safetensors_round_trip_with_shared_and_strided_tensors(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {
        "weight": base,
        "alias": base,
        "row": base[1],
        "transposed": base.t(),
        "half": torch.randn(5).half(),
        "index": torch.arange(3),
    }
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old contents")
    write_safetensors(state, path)
    loaded = read_state_dict(path)
    assert sorted(loaded) == sorted(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)
    assert [entry.name for entry in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_safetensors_detected_whatever_its_header_length(tmp_path: Path, suffix: str) -> None:
    # The first byte of the header length can equal the pickle protocol opcode (0x80).
    path = tmp_path / f"model{suffix}"
    for name_length in range(1, 300):
        state = {"w" * name_length: torch.ones(1)}
        write_safetensors(state, path)
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    _assert_same_state(read_state_dict(path), state)


def test_write_safetensors_keeps_old_file_when_writing_fails(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors({"weight": torch.ones(2)}, path)
    original = path.read_bytes()

    def fail_midway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        write_safetensors({"weight": torch.zeros(2)}, path)
    assert path.read_bytes() == original
    assert [entry.name for entry in tmp_path.iterdir()] == ["model.safetensors"]


def test_write_safetensors_rejects_non_tensor_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'step'"):
        write_safetensors({"weight": torch.ones(2), "step": 3}, tmp_path / "model.safetensors")
    assert not any(tmp_path.iterdir())


_WEIGHTS = {"decoder.film_mul.weight": torch.randn(4, 3), "decoder.film_mul.bias": torch.randn(4).half()}


@pytest.mark.parametrize(
    "saved",
    [
        _WEIGHTS,
        {"state_dict": _WEIGHTS, "epoch": 7, "optimizer": {"lr": 0.001}},
        {"model": {"state_dict": _WEIGHTS}},
        {"model_state_dict": {f"module.{name}": tensor for name, tensor in _WEIGHTS.items()}},
        {f"module._orig_mod.{name}": tensor for name, tensor in _WEIGHTS.items()},
    ],
    ids=["plain", "state_dict", "model-state_dict", "ddp", "ddp-compiled"],
)
def test_torch_checkpoint_containers_and_prefixes(tmp_path: Path, saved: dict) -> None:
    path = tmp_path / "weights.pth"
    torch.save(saved, path)
    _assert_same_state(read_state_dict(path), _WEIGHTS)


def test_legacy_non_zip_torch_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save(_WEIGHTS, path, _use_new_zipfile_serialization=False)
    _assert_same_state(read_state_dict(path), _WEIGHTS)


def test_checkpoint_without_tensors_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "config": {"reduce_dim": 64}}, path)
    with pytest.raises(CheckpointError) as error:
        read_state_dict(path)
    _assert_one_line_error(error, path, "no tensors found")


def _malicious_torchscript_archive(valid: Path, path: Path, payload: bytes) -> None:
    with zipfile.ZipFile(valid) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            target.writestr(name, payload if name.endswith("/data.pkl") else source.read(name))


def test_torchscript_storage_of_wrong_size_is_rejected(tmp_path: Path, torchscript_archives: dict[str, Path]) -> None:
    path = tmp_path / "short-storage.pt"
    with zipfile.ZipFile(torchscript_archives["traced"]) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, data[:-2] if name.endswith("/data/0") else data)
    with pytest.raises(CheckpointError) as error:
        read_state_dict(path)
    _assert_one_line_error(error, path, "expected")


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle", "torchscript"])
def test_malicious_pickle_is_refused_without_running_code(
    tmp_path: Path, torchscript_archives: dict[str, Path], container: str
) -> None:
    marker = tmp_path / "code-ran"
    # The payload is real: ordinary unpickling runs it.
    pickle.loads(pickle.dumps(_CreatesMarkerFile(marker)))
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "evil.pt"
    payload = {"weight": torch.ones(2), "payload": _CreatesMarkerFile(marker)}
    if container == "torch-zip":
        torch.save(payload, path)
    elif container == "raw-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        _malicious_torchscript_archive(torchscript_archives["scripted"], path, pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError) as error:
        read_state_dict(path)
    _assert_one_line_error(error, path, "will not be unpickled for safety")
    assert "no code" in str(error.value)
    assert not marker.exists()


def _torch_zip(path: Path) -> None:
    torch.save(_WEIGHTS, path)


def _safetensors(path: Path) -> None:
    write_safetensors(_WEIGHTS, path)


@pytest.mark.parametrize("writer", [_torch_zip, _safetensors, "torchscript"], ids=["torch-zip", "safetensors", "ts"])
def test_truncated_file_is_rejected(tmp_path: Path, torchscript_archives: dict[str, Path], writer) -> None:
    complete = tmp_path / "complete.bin"
    if writer == "torchscript":
        complete.write_bytes(torchscript_archives["traced"].read_bytes())
    else:
        writer(complete)
    path = tmp_path / "truncated.bin"
    data = complete.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as error:
        read_state_dict(path)
    _assert_one_line_error(error, path, "truncated or corrupt")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "empty (0 bytes)"),
        (b"these are not weights\n" * 10, "not a safetensors or PyTorch checkpoint"),
    ],
    ids=["zero-bytes", "text"],
)
def test_files_that_are_not_checkpoints_are_rejected(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        read_state_dict(path)
    _assert_one_line_error(error, path, fragment)


def test_zip_that_is_not_a_checkpoint_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cat.txt", "meow")
    with pytest.raises(CheckpointError) as error:
        read_state_dict(path)
    _assert_one_line_error(error, path, "not a PyTorch checkpoint")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "ViT-B-16.pt"
    with pytest.raises(FileNotFoundError, match="ViT-B-16.pt"):
        read_state_dict(path)
