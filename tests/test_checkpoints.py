"""Every checkpoint format through `clipseg.load_model`, checked against transformers' CLIPSeg on the same weights."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import clipseg
from clipseg.checkpoints.errors import CheckpointError
from clipseg.model.config import VisionConfig
from clipseg.testing import random_model, random_transformers_clipseg, tiny_config

pytest.importorskip("transformers")

LAYERS = tiny_config().decoder.extract_layers


# ---- the inverse of transformers' conversion, written independently of our converters -----------------------


def _hf_tower_to_openai(state: dict, hf_prefix: str, openai_prefix: str) -> dict:
    out = {}
    block_names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
    start = hf_prefix + "encoder.layers."
    layers = {int(k[len(start):].split(".")[0]) for k in state if k.startswith(start)}
    for i in layers:
        hf, ours = f"{hf_prefix}encoder.layers.{i}.", f"{openai_prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{ours}attn.in_proj_{kind}"] = torch.cat([state[f"{hf}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for hf_name, openai_name in block_names.items():
                out[f"{ours}{openai_name}.{kind}"] = state[f"{hf}{hf_name}.{kind}"]
    return out


def hf_to_openai_clip(state: dict, prefix: str = "clip.") -> dict:
    """transformers CLIP keys -> OpenAI's CLIP state dict (as in ViT-B-16.pt)."""
    v, t = f"{prefix}vision_model.", f"{prefix}text_model."
    out = {
        "visual.class_embedding": state[f"{v}embeddings.class_embedding"],
        "visual.conv1.weight": state[f"{v}embeddings.patch_embedding.weight"],
        "visual.positional_embedding": state[f"{v}embeddings.position_embedding.weight"],
        "visual.proj": state[f"{prefix}visual_projection.weight"].T.contiguous(),
        "token_embedding.weight": state[f"{t}embeddings.token_embedding.weight"],
        "positional_embedding": state[f"{t}embeddings.position_embedding.weight"],
        "text_projection": state[f"{prefix}text_projection.weight"].T.contiguous(),
        "logit_scale": state[f"{prefix}logit_scale"],
    }
    for kind in ("weight", "bias"):
        out[f"visual.ln_pre.{kind}"] = state[f"{v}pre_layrnorm.{kind}"]
        out[f"visual.ln_post.{kind}"] = state[f"{v}post_layernorm.{kind}"]
        out[f"ln_final.{kind}"] = state[f"{t}final_layer_norm.{kind}"]
    out |= _hf_tower_to_openai(state, v, "visual.")
    out |= _hf_tower_to_openai(state, t, "")
    return out


def hf_to_original_decoder(state: dict) -> dict:
    """transformers CLIPSeg decoder keys -> the original repository's rd64-uni(.refined).pth layout."""
    out = {}
    names = {"layer_norm1": "norm1", "layer_norm2": "norm2", "mlp.fc1": "linear1", "mlp.fc2": "linear2",
             "self_attn.out_proj": "self_attn.out_proj"}
    for key, tensor in state.items():
        if not key.startswith("decoder."):
            continue
        rest = key[len("decoder."):]
        if rest.startswith(("film_", "reduces.")):
            out[rest] = tensor
        elif rest.startswith("transposed_convolution"):
            out[rest.replace("transposed_convolution", "trans_conv")] = tensor
    for i in {int(k.split(".")[2]) for k in state if k.startswith("decoder.layers.")}:
        hf = f"decoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.self_attn.in_proj_{kind}"] = torch.cat([state[f"{hf}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for hf_name, name in names.items():
                out[f"blocks.{i}.{name}.{kind}"] = state[f"{hf}{hf_name}.{kind}"]
    width, reduce_dim = state["decoder.reduces.0.weight"].shape[1], state["decoder.reduces.0.weight"].shape[0]
    out["reduce.weight"], out["reduce.bias"] = torch.randn(reduce_dim, width), torch.randn(reduce_dim)  # unused upstream
    return out


def _module_tree(state: dict) -> nn.Module:
    """A module whose parameter names are the dotted keys of `state` (to write a TorchScript archive)."""

    class Node(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Node()
    for key, tensor in state.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, Node())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(tensor.clone(), requires_grad=False))
    return root


# ---- fixtures --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["simple", "refined"])
def reference(request):
    return random_transformers_clipseg(tiny_config(request.param), seed=3)


def _reference_logits(reference, pixel_values, ids):
    with torch.inference_mode():
        return reference(input_ids=ids, pixel_values=pixel_values).logits


def _our_logits(model, pixel_values, ids):
    with torch.inference_mode():
        return model(pixel_values, model.encode_text(ids))[:, 0]


def _inputs():
    torch.manual_seed(0)
    ids = clipseg.CLIPTokenizer.default()(["a cup", "something to sit on"]).ids
    return torch.randn(2, 3, 224, 224), ids


@pytest.fixture(scope="module")
def original_files(reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("original")
    state = reference.state_dict()
    torch.save(hf_to_original_decoder(state), root / "rd-uni.pth")
    openai = hf_to_openai_clip(state)
    torch.save(openai, root / "clip_state_dict.pt")
    scripted = torch.jit.trace(_module_tree(openai), torch.zeros(1))
    torch.jit.save(scripted, root / "ViT-tiny.pt")
    from transformers import CLIPConfig, CLIPModel

    clip_model = CLIPModel(CLIPConfig(text_config=reference.config.text_config.to_dict(),
                                      vision_config=reference.config.vision_config.to_dict(),
                                      projection_dim=reference.config.projection_dim))
    clip_model.load_state_dict({k[len("clip."):]: v for k, v in state.items() if k.startswith("clip.")})
    clip_model.save_pretrained(root / "hf-clip")
    return root


# ---- formats ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip_kind", ["ViT-tiny.pt", "clip_state_dict.pt", "hf-clip"])
def test_original_decoder_with_every_clip_layout_matches_transformers(reference, original_files, clip_kind):
    model = clipseg.load_model(original_files / "rd-uni.pth", clip=original_files / clip_kind, extract_layers=LAYERS)
    pixel_values, ids = _inputs()
    torch.testing.assert_close(_our_logits(model, pixel_values, ids), _reference_logits(reference, pixel_values, ids),
                               atol=1e-4, rtol=0)


def test_original_variant_inferred_from_shapes(reference, original_files):
    model = clipseg.load_model(original_files / "rd-uni.pth", clip=original_files / "clip_state_dict.pt",
                               extract_layers=LAYERS)
    refined = reference.config.use_complex_transposed_convolution
    assert model.config.decoder.head == ("refined" if refined else "simple")
    assert model.config.decoder.reduce_dim == reference.config.reduce_dim
    assert model.config.vision == tiny_config().vision


def test_original_full_model_file_with_clip_inside(reference, original_files, tmp_path):
    state = hf_to_original_decoder(reference.state_dict())
    state |= {f"clip_model.{k}": v for k, v in hf_to_openai_clip(reference.state_dict()).items()}
    torch.save({"state_dict": state}, tmp_path / "full.pth")
    model = clipseg.load_model(tmp_path / "full.pth", extract_layers=LAYERS)
    pixel_values, ids = _inputs()
    torch.testing.assert_close(_our_logits(model, pixel_values, ids), _reference_logits(reference, pixel_values, ids),
                               atol=1e-4, rtol=0)


def test_original_files_default_to_quickstart_layers(tmp_path):
    """Released decoders default to (3, 6, 9) like the original Quickstart and the hub; (3, 7, 9) on request."""
    tiny = tiny_config()
    config = tiny.replace(vision=VisionConfig(**{**tiny.vision.__dict__, "layers": 12}), extract_layers=(3, 6, 9))
    reference = random_transformers_clipseg(config, seed=5)
    torch.save(hf_to_original_decoder(reference.state_dict()), tmp_path / "rd.pth")
    torch.save(hf_to_openai_clip(reference.state_dict()), tmp_path / "clip.pt")
    default = clipseg.load_model(tmp_path / "rd.pth", clip=tmp_path / "clip.pt")
    paper = clipseg.load_model(tmp_path / "rd.pth", clip=tmp_path / "clip.pt", extract_layers=(3, 7, 9))
    assert default.config.decoder.extract_layers == (3, 6, 9)
    assert paper.config.decoder.extract_layers == (3, 7, 9)
    pixel_values, ids = _inputs()
    torch.testing.assert_close(_our_logits(default, pixel_values, ids), _reference_logits(reference, pixel_values, ids),
                               atol=1e-4, rtol=0)
    assert not torch.allclose(_our_logits(paper, pixel_values, ids), _our_logits(default, pixel_values, ids))


def test_save_pretrained_round_trips_exactly(tmp_path):
    model = random_model(tiny_config("refined"), seed=7)
    model.save_pretrained(tmp_path / "ours")
    assert {p.name for p in (tmp_path / "ours").iterdir()} >= {"config.json", "model.safetensors", "vocab.json", "merges.txt"}
    loaded = clipseg.load_model(tmp_path / "ours")
    assert loaded.config == model.config
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    pixel_values, ids = _inputs()
    assert torch.equal(_our_logits(loaded, pixel_values, ids), _our_logits(model, pixel_values, ids))


def test_convert_original_to_ours_and_back(reference, original_files, tmp_path):
    converted = clipseg.load_model(original_files / "rd-uni.pth", clip=original_files / "ViT-tiny.pt",
                                   extract_layers=LAYERS)
    converted.save_pretrained(tmp_path / "converted")
    reloaded = clipseg.load_model(tmp_path / "converted")
    pixel_values, ids = _inputs()
    assert torch.equal(_our_logits(reloaded, pixel_values, ids), _our_logits(converted, pixel_values, ids))


def test_extract_layers_override_and_dtype(tmp_path):
    random_model().save_pretrained(tmp_path / "m")
    model = clipseg.load_model(tmp_path / "m", extract_layers=[1, 2, 3], dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and not model.training
    with pytest.raises(ValueError, match="names 2 CLIP blocks but the decoder"):
        clipseg.load_model(tmp_path / "m", extract_layers=[1, 3])
    with pytest.raises(ValueError, match="strictly increasing"):
        clipseg.load_model(tmp_path / "m", extract_layers=[2, 1, 3])


# ---- bad checkpoints ---------------------------------------------------------------------------------------------


@pytest.fixture()
def saved(tmp_path):
    return random_model().save_pretrained(tmp_path / "m")


def test_missing_key_is_named(saved):
    state = load_file(saved / "model.safetensors")
    del state["decoder.film_add.bias"]
    save_file(state, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.*missing keys decoder\.film_add\.bias"):
        clipseg.load_model(saved)


def test_unexpected_key_is_named(saved):
    state = load_file(saved / "model.safetensors")
    state["decoder.extra.weight"] = torch.zeros(1)
    save_file(state, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected keys decoder\.extra\.weight"):
        clipseg.load_model(saved)


def test_wrong_shape_is_named(saved):
    state = load_file(saved / "model.safetensors")
    state["decoder.film_mul.weight"] = torch.zeros(3, 3)
    save_file(state, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"shapes.*decoder\.film_mul\.weight"):
        clipseg.load_model(saved)


def test_truncated_weights(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        clipseg.load_model(saved)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path, original_files):
    marker = tmp_path / "marker"
    state = {"film_mul.weight": torch.zeros(2, 2), "evil": _Payload(marker)}
    with open(tmp_path / "evil.pth", "wb") as file:
        pickle.dump(state, file)
    torch.save(state, tmp_path / "evil_zip.pth")
    for name in ("evil.pth", "evil_zip.pth"):
        with pytest.raises(CheckpointError, match="safety"):
            clipseg.load_model(tmp_path / name, clip=original_files / "clip_state_dict.pt")
    assert not marker.exists()


def test_not_a_clipseg_file(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an original CLIPSeg checkpoint"):
        clipseg.load_model(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="no such file"):
        clipseg.load_model(tmp_path / "does-not-exist.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        clipseg.load_model(tmp_path / "empty")


# ---- the hub path, exactly as users take it (a fresh process with the HF cache and HF_HUB_OFFLINE=1) ---------


def _run(code: str, hf_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_hub_id_from_prefilled_cache_offline(reference, tmp_path):
    snapshot = tmp_path / "hf" / "hub" / "models--CIDAS--clipseg-test" / "snapshots" / ("ab" * 20)
    reference.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("ab" * 20)
    pixel_values, ids = _inputs()
    torch.save({"pixel_values": pixel_values, "ids": ids}, tmp_path / "inputs.pt")
    result = _run(f"""
        import torch, clipseg
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r}, weights_only=True)
        model = clipseg.load_model("CIDAS/clipseg-test")
        with torch.inference_mode():
            logits = model(inputs["pixel_values"], model.encode_text(inputs["ids"]))[:, 0]
        torch.save(logits, {str(tmp_path / 'logits.pt')!r})
    """, tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    logits = torch.load(tmp_path / "logits.pt", weights_only=True)
    torch.testing.assert_close(logits, _reference_logits(reference, pixel_values, ids), atol=1e-4, rtol=0)


def test_offline_with_nothing_cached_says_what_to_do(tmp_path):
    result = _run("""
        import clipseg
        from clipseg.checkpoints.errors import CheckpointError
        try:
            clipseg.load_model("CIDAS/clipseg-rd64-refined")
        except CheckpointError as error:
            print(error)
    """, tmp_path / "empty-hf")
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert "CIDAS/clipseg-rd64-refined" in message and "local directory" in message
    assert len(message.splitlines()) == 1


def test_build_leaves_only_the_named_prefixes_fresh():
    from clipseg.checkpoints.load import build

    source = random_model(seed=0)
    clip_only = {k: v for k, v in source.state_dict().items() if not k.startswith("decoder.")}

    def fresh() -> clipseg.CLIPSeg:
        torch.manual_seed(1)
        return clipseg.CLIPSeg(tiny_config())

    model = build(fresh, clip_only, "clip.safetensors", may_be_missing=("decoder.",))
    for key, value in model.state_dict().items():
        expected = fresh().state_dict()[key] if key.startswith("decoder.") else clip_only[key]
        assert torch.equal(value, expected), key
    with pytest.raises(CheckpointError, match=r"clip.safetensors: missing keys decoder\."):
        build(fresh, clip_only, "clip.safetensors")
    without_text = {k: v for k, v in clip_only.items() if not k.startswith("text.")}
    with pytest.raises(CheckpointError, match=r"missing keys text\."):
        build(fresh, without_text, "clip.safetensors", may_be_missing=("decoder.",))
    with pytest.raises(CheckpointError, match="unexpected keys extra"):
        build(fresh, {**clip_only, "extra": torch.zeros(1)}, "clip.safetensors", may_be_missing=("decoder.",))
