"""Issue 11, loading: hostile model files end quickly with one line naming the file and the cause."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import clipseg
from clipseg.checkpoints.errors import CheckpointError
from clipseg.checkpoints.io import read_state_dict
from clipseg.model.config import CLIPSegConfig, ConfigError
from clipseg.testing import random_model, random_transformers_clipseg

SRC = Path(clipseg.__file__).resolve().parents[1]


def run_limited(code: str, *, memory_mb: int = 2048, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter under an address-space limit; fails the test on a timeout."""
    prelude = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, ({memory_mb} * 1024**2, {memory_mb} * 1024**2))
        """
    )
    environment = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=environment,
    )


def load_in_subprocess(directory: Path, *, memory_mb: int = 2048) -> subprocess.CompletedProcess:
    """`clipseg.load_model(directory)` under `run_limited`; prints the one-line error it raises."""
    code = f"""
        import clipseg
        try:
            clipseg.load_model({str(directory)!r})
        except ValueError as error:
            print(error)
    """
    return run_limited(code, memory_mb=memory_mb)


# ---- 1. TorchScript archives whose module tree is a shared graph ------------------------------------------


def _script_archive(path: Path, root: object, code: str) -> None:
    """A TorchScript-layout zip: data.pkl holding `root` (objects of module `__torch__`), code/__torch__.py."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(root, protocol=2))
        archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("archive/code/__torch__.py", code)


@pytest.fixture()
def torch_namespace(monkeypatch):
    """Classes that pickle as `__torch__.Node` (the pickler looks the class up by module and name)."""
    module = types.ModuleType("__torch__")

    class Node:
        pass

    Node.__module__, Node.__qualname__ = "__torch__", "Node"
    module.Node = Node
    monkeypatch.setitem(sys.modules, "__torch__", module)
    return Node


_NODE_CODE = "class Node(Module):\n  __parameters__ = []\n  __buffers__ = []\n"


def test_shared_module_graph_is_walked_once(tmp_path, torch_namespace):
    # 40 levels, each node's two attributes point at the same child: 2^40 paths, 41 objects, about 1 KB.
    child = torch_namespace()
    child.training = False
    for _ in range(40):
        parent = torch_namespace()
        parent.left = parent.right = child
        child = parent
    path = tmp_path / "dag.pt"
    _script_archive(path, child, _NODE_CODE)
    assert path.stat().st_size < 2000
    result = run_limited(
        f"""
        from clipseg.checkpoints.errors import CheckpointError
        from clipseg.checkpoints.io import read_state_dict
        try:
            read_state_dict({str(path)!r})
        except CheckpointError as error:
            print(error)
        """,

    )
    assert result.returncode == 0, result.stderr
    assert str(path) in result.stdout and "no parameters or buffers" in result.stdout


def test_cyclic_and_too_deep_module_trees_are_refused(tmp_path, torch_namespace):
    cyclic = torch_namespace()
    cyclic.self_reference = cyclic
    cyclic.other = torch_namespace()
    cyclic.other.back = cyclic
    path = tmp_path / "cycle.pt"
    _script_archive(path, cyclic, _NODE_CODE)
    with pytest.raises(CheckpointError, match="no parameters or buffers"):
        read_state_dict(path)

    deep = torch_namespace()
    deep.training = False
    for _ in range(100):
        parent = torch_namespace()
        parent.child = deep
        deep = parent
    path = tmp_path / "deep.pt"
    _script_archive(path, deep, _NODE_CODE)
    with pytest.raises(CheckpointError, match=r"deep\.pt.*nested deeper than \d+ levels"):
        read_state_dict(path)


def test_compressed_tensor_data_bomb_is_refused(tmp_path):
    # A legal archive layout whose one storage claims 64 MB but is stored deflated in a few KB.
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w") as archive:
        pid = ("storage", torch.FloatStorage, "0", "cpu", 16 * 1024**2)
        storage = object()

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                return pid if obj is storage else None

        buffer = io.BytesIO()
        Pickler(buffer, protocol=2).dump({"storage": storage})
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("archive/data/0", bytes(64 * 1024**2), compress_type=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 200_000
    with pytest.raises(CheckpointError, match=r"bomb\.pt.*expands \d+-fold"):
        read_state_dict(path)


# ---- 2. configs are validated before a model is built -------------------------------------------------------


def _hf_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "hf"
    random_transformers_clipseg().save_pretrained(directory)
    return directory


def _edit_config(directory: Path, edit) -> None:
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))


def test_billion_layers_is_refused_quickly_in_bounded_memory(tmp_path):
    pytest.importorskip("transformers")
    directory = _hf_directory(tmp_path)
    _edit_config(directory, lambda c: c["text_config"].update(num_hidden_layers=10**9))
    result = load_in_subprocess(directory, memory_mb=3072)
    assert result.returncode == 0, result.stderr
    assert "text_config.num_hidden_layers = 1000000000" in result.stdout
    assert "config.json" in result.stdout


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda c: c["vision_config"].update(num_attention_heads=0), "vision_config.num_attention_heads = 0"),
        (lambda c: c["vision_config"].update(patch_size=0), "vision_config.patch_size = 0"),
        (lambda c: c["text_config"].update(num_attention_heads=3), "a divisor of the width"),
        (lambda c: c["vision_config"].update(num_hidden_layers=-3), "vision_config.num_hidden_layers = -3"),
        (lambda c: c["vision_config"].update(hidden_size=math.nan), "vision_config.hidden_size = nan"),
        (lambda c: c.update(reduce_dim=0), "reduce_dim = 0"),
        (lambda c: c.update(extract_layers=[1, 2, 99]), "extract_layers"),
        (lambda c: c.update(vision_config=[1, 2]), "vision_config is a list"),
        (lambda c: c.update(decoder_num_attention_heads=5), "decoder_num_attention_heads = 5"),
    ],
    ids=["heads-0", "patch-0", "heads-indivisible", "layers-negative", "width-nan", "reduce-0", "extract-99",
         "vision-list", "decoder-heads"],
)
def test_bad_config_values_name_the_key(tmp_path, edit, fragment):
    pytest.importorskip("transformers")
    directory = _hf_directory(tmp_path)
    _edit_config(directory, edit)
    with pytest.raises(ValueError) as error:
        clipseg.load_model(directory)
    message = str(error.value)
    assert fragment in message and "config.json" in message and "\n" not in message


def test_config_that_is_a_list_names_the_file(tmp_path):
    directory = random_model().save_pretrained(tmp_path / "m")
    (directory / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError, match=r"config\.json: holds a JSON list, expected an object"):
        clipseg.load_model(directory)


def test_saved_config_values_are_validated(tmp_path):
    directory = random_model().save_pretrained(tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    config["vision"]["heads"] = 0
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: vision\.heads = 0: expected an integer"):
        clipseg.load_model(directory)


def test_image_std_of_zeros_is_refused(tmp_path):
    pytest.importorskip("transformers")
    directory = _hf_directory(tmp_path)
    (directory / "preprocessor_config.json").write_text(json.dumps({"image_std": [0, 0, 0], "size": 64}))
    with pytest.raises(ValueError, match=r"preprocessor_config\.json: image_std = \(0, 0, 0\): expected 3 finite"):
        clipseg.load_model(directory)
    with pytest.raises(ConfigError, match="image_std"):
        CLIPSegConfig(image_std=(0.0, 0.0, 0.0))


def test_declared_shapes_are_checked_before_reading_tensor_data(tmp_path, monkeypatch):
    directory = random_model().save_pretrained(tmp_path / "m")
    state = load_file(directory / "model.safetensors")
    state["visual.positional_embedding"] = torch.zeros(3, 3)
    save_file(state, directory / "model.safetensors")
    reads = []
    monkeypatch.setattr("clipseg.checkpoints.load.read_state_dict", lambda path: reads.append(path))
    with pytest.raises(CheckpointError, match=r"visual\.positional_embedding \(3, 3\) \(expected \(17, 128\)\)"):
        clipseg.load_model(directory)
    assert reads == []  # refused from the header alone


# ---- 3. special files -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("name", ["config.json", "vocab.json", "model.safetensors"])
def test_fifo_as_model_file_fails_fast(tmp_path, name):
    directory = random_model().save_pretrained(tmp_path / "m")
    (directory / name).unlink()
    os.mkfifo(directory / name)
    result = load_in_subprocess(directory)
    assert result.returncode == 0, result.stderr
    assert f"{directory / name}: not a regular file (a FIFO)" in result.stdout


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
@pytest.mark.parametrize("name", ["config.json", "merges.txt", "model.safetensors"])
def test_symlink_to_dev_zero_fails_fast(tmp_path, name):
    directory = random_model().save_pretrained(tmp_path / "m")
    (directory / name).unlink()
    (directory / name).symlink_to("/dev/zero")
    result = load_in_subprocess(directory)
    assert result.returncode == 0, result.stderr
    assert f"{directory / name}: not a regular file (a character device)" in result.stdout


def test_oversized_config_is_refused(tmp_path):
    directory = random_model().save_pretrained(tmp_path / "m")
    with open(directory / "config.json", "ab") as file:
        file.write(b" " * (17 * 1024**2))
    with pytest.raises(CheckpointError, match=r"config\.json: larger than the 16 MB allowed"):
        clipseg.load_model(directory)


# ---- 5. shard indexes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shard", ["../x.safetensors", "/etc/passwd", "/dev/zero", "a/../../x.safetensors", "C:\\x"])
def test_shard_paths_are_confined_to_the_model_directory(tmp_path, shard):
    directory = random_model().save_pretrained(tmp_path / "m")
    (tmp_path / "x.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    (directory / "model.safetensors").unlink()
    index = {"weight_map": {"decoder.film_mul.weight": shard}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="lies outside the model directory"):
        clipseg.load_model(directory)


def test_shard_index_without_weight_map_names_the_file(tmp_path):
    directory = random_model().save_pretrained(tmp_path / "m")
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match=r"index\.json: no weight_map"):
        clipseg.load_model(directory)


def test_sharded_weights_inside_the_directory_load(tmp_path):
    model = random_model()
    directory = model.save_pretrained(tmp_path / "m")
    state = load_file(directory / "model.safetensors")
    names = sorted(state)
    (directory / "shards").mkdir()
    save_file({k: state[k] for k in names[: len(names) // 2]}, directory / "shards" / "a.safetensors")
    save_file({k: state[k] for k in names[len(names) // 2 :]}, directory / "b.safetensors")
    (directory / "model.safetensors").unlink()
    weight_map = {k: "shards/a.safetensors" if i < len(names) // 2 else "b.safetensors" for i, k in enumerate(names)}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = clipseg.load_model(directory)
    assert torch.equal(loaded.state_dict()["decoder.film_mul.weight"], model.state_dict()["decoder.film_mul.weight"])


# ---- 6, 10: dtypes and values of weights ------------------------------------------------------------------


def test_integer_tensors_name_the_dtype_and_tensors(tmp_path):
    directory = random_model().save_pretrained(tmp_path / "m")
    state = load_file(directory / "model.safetensors")
    state["decoder.film_mul.weight"] = state["decoder.film_mul.weight"].to(torch.int32)
    state["decoder.film_add.bias"] = state["decoder.film_add.bias"].to(torch.int64)
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        clipseg.load_model(directory)
    message = str(error.value)
    assert "int32" in message and "int64" in message
    assert "decoder.film_mul.weight" in message and "decoder.film_add.bias" in message


def test_nan_weights_are_refused(tmp_path):
    directory = random_model().save_pretrained(tmp_path / "m")
    state = load_file(directory / "model.safetensors")
    state["decoder.film_mul.weight"][0, 0] = math.nan
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"NaN or infinite weights in decoder\.film_mul\.weight"):
        clipseg.load_model(directory)


# ---- 7, 10: tokenizer files -----------------------------------------------------------------------------------


def test_non_utf8_tokenizer_files_name_the_file(tmp_path):
    directory = random_model().save_pretrained(tmp_path / "m")
    (directory / "merges.txt").write_bytes(b"#version: 0.2\n\xff\xfe a\n")
    with pytest.raises(CheckpointError, match=r"merges\.txt: the BPE merges file is not UTF-8"):
        clipseg.load_model(directory)
    directory = random_model().save_pretrained(tmp_path / "n")
    (directory / "vocab.json").write_bytes(b'{"\xff": 1}')
    with pytest.raises(CheckpointError, match=r"vocab\.json: the tokenizer vocabulary is not UTF-8"):
        clipseg.load_model(directory)


def test_empty_merges_and_non_vocabulary_are_refused(tmp_path):
    directory = random_model().save_pretrained(tmp_path / "m")
    (directory / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(CheckpointError, match=r"merges\.txt: no merges"):
        clipseg.load_model(directory)
    directory = random_model().save_pretrained(tmp_path / "n")
    (directory / "vocab.json").write_text(json.dumps({"hello": 1, "world": 2}))
    with pytest.raises(CheckpointError, match=r"vocab\.json: vocabulary lacks the special token"):
        clipseg.load_model(directory)
    directory = random_model().save_pretrained(tmp_path / "o")
    (directory / "vocab.json").write_text(json.dumps(["not", "a", "vocabulary"]))
    with pytest.raises(CheckpointError, match=r"vocab\.json: not a vocabulary"):
        clipseg.load_model(directory)


def test_half_a_tokenizer_is_not_silently_replaced(tmp_path):
    directory = random_model().save_pretrained(tmp_path / "m")
    (directory / "merges.txt").unlink()
    with pytest.raises(CheckpointError, match=r"vocab\.json has no merges\.txt beside it"):
        clipseg.load_model(directory)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_fifo_as_a_yaml_config_fails_fast(tmp_path):
    os.mkfifo(tmp_path / "base.yaml")
    (tmp_path / "run.yaml").write_text("base: base.yaml\nname: x\n")
    result = run_limited(
        f"""
        from clipseg.training.config import load_config
        for name in ("base.yaml", "run.yaml"):
            try:
                load_config({str(tmp_path)!r} + "/" + name)
            except (ValueError, FileNotFoundError) as error:
                print(error)
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all("base.yaml" in line for line in lines)
