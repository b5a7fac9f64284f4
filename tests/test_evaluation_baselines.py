"""The two baselines: CLIP-Deconv's structure and computation, ViTSeg on timm-format ViT weights checked against
transformers' ViT (an independent implementation of the same network), round trips and trainability."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipseg.checkpoints.io import write_safetensors
from clipseg.checkpoints.timm_vit import (
    is_timm_vit,
    timm_vision_config,
    timm_vit_to_ours,
)
from clipseg import load_model
from clipseg.checkpoints.vitseg import build_vitseg
from clipseg.model.baselines import CLIPDeconv, ViTSeg
from clipseg.model.clip import VisionTransformer
from clipseg.model.config import CLIPSegConfig, DecoderConfig, TextConfig
from clipseg.testing import perturb_, tiny_config

HEADS = 4

pytestmark = pytest.mark.usefixtures("single_thread")


def _hf_vit(width: int = 64, layers: int = 3, image_size: int = 48):
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        intermediate_size=2 * width,
        image_size=image_size,
        patch_size=16,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
    )
    torch.manual_seed(0)
    model = ViTModel(config, add_pooling_layer=False).eval()
    return perturb_(model, seed=1, decoder_prefixes=())


def _timm_layout(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' ViT keys -> timm's (independent of the converter under test)."""
    out = {
        "cls_token": hf_state["embeddings.cls_token"],
        "pos_embed": hf_state["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hf_state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf_state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf_state["layernorm.weight"],
        "norm.bias": hf_state["layernorm.bias"],
        "head.weight": torch.randn(10, hf_state["layernorm.weight"].shape[0]),
        "head.bias": torch.zeros(10),
    }
    layers = 1 + max(int(k.split(".")[1]) for k in hf_state if k.startswith("layers."))
    for i in range(layers):
        p = f"layers.{i}."
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.norm1.{kind}"] = hf_state[p + f"layernorm_before.{kind}"]
            out[f"blocks.{i}.norm2.{kind}"] = hf_state[p + f"layernorm_after.{kind}"]
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [hf_state[p + f"attention.{n}_proj.{kind}"] for n in ("q", "k", "v")]
            )
            out[f"blocks.{i}.attn.proj.{kind}"] = hf_state[p + f"attention.o_proj.{kind}"]
            out[f"blocks.{i}.mlp.fc1.{kind}"] = hf_state[p + f"mlp.fc1.{kind}"]
            out[f"blocks.{i}.mlp.fc2.{kind}"] = hf_state[p + f"mlp.fc2.{kind}"]
    return out


def test_timm_vit_converts_to_our_vision_transformer_exactly():
    hf = _hf_vit()
    timm_state = _timm_layout(hf.state_dict())
    assert is_timm_vit(timm_state)
    converted, unsupported = timm_vit_to_ours(timm_state)
    assert not unsupported
    config = timm_vision_config(timm_state, heads=HEADS, output_dim=64)
    assert (config.image_size, config.layers, config.activation, config.pre_norm, config.patch_bias) == (
        48,
        3,
        "gelu",
        False,
        True,
    )
    vit = VisionTransformer(config).eval()
    state = {k.removeprefix("visual."): v for k, v in converted.items()}
    missing, unexpected = vit.load_state_dict(state, strict=False)
    assert missing == ["proj"] and not unexpected
    with torch.no_grad():
        vit.proj.copy_(torch.eye(64))
        pixels = torch.randn(2, 3, 48, 48)
        reference = hf(pixel_values=pixels, output_hidden_states=True)
        features = vit.forward_features(pixels, [0, 2])
        torch.testing.assert_close(features[0], reference.hidden_states[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(features[1], reference.hidden_states[3], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vit(pixels), reference.last_hidden_state[:, 0], atol=1e-5, rtol=1e-5)


def test_timm_converter_reports_what_it_cannot_hold():
    state = _timm_layout(_hf_vit(layers=1).state_dict())
    state["dist_token"] = torch.zeros(1, 1, 64)
    _, unsupported = timm_vit_to_ours(state)
    assert unsupported == ["dist_token"]
    with pytest.raises(ValueError, match="not a timm ViT"):
        timm_vit_to_ours({"visual.conv1.weight": torch.zeros(1)})


def test_clip_deconv_matches_the_original_structure_and_computation():
    with torch.device("meta"):
        full = CLIPDeconv(CLIPDeconv.default_config(), reduce2_dim=64)
    trainable = {k: v.numel() for k, v in full.named_parameters() if v.requires_grad}
    assert sorted({k.split(".")[1] for k in trainable}) == ["film_add", "film_mul", "reduce", "reduce2", "trans_conv"]
    assert sum(trainable.values()) == (768 * 64 + 64) + 2 * (512 * 64 + 64) + 2 * (64 * 64 + 64) + (64 * 256 + 1)
    torch.manual_seed(0)
    model = perturb_(CLIPDeconv(tiny_config().replace(extract_layers=(2,)), reduce2_dim=8), seed=0).eval()
    pixels, conditional = torch.randn(2, 3, 64, 96), torch.randn(2, 32)
    with torch.no_grad():
        logits = model(pixels, conditional)
        (activation,) = model.extract_features(pixels)
        decoder = model.decoder
        x = activation @ decoder.reduce.weight.T + decoder.reduce.bias
        x = (conditional @ decoder.film_mul.weight.T + decoder.film_mul.bias)[:, None] * x + (
            conditional @ decoder.film_add.weight.T + decoder.film_add.bias
        )[:, None]
        x = F.linear(
            F.relu(F.linear(x, decoder.reduce2[0].weight, decoder.reduce2[0].bias)),
            decoder.reduce2[2].weight,
            decoder.reduce2[2].bias,
        )
        grid = x[:, 1:].reshape(2, 4, 6, -1).permute(0, 3, 1, 2)
        expected = F.conv_transpose2d(grid, decoder.trans_conv.weight, decoder.trans_conv.bias, stride=16)
    assert logits.shape == (2, 1, 64, 96)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exactly one CLIP block"):
        CLIPDeconv(tiny_config())


def _tiny_vitseg_files(tmp_path):
    """A timm-format ViT file and an OpenAI-layout CLIP file."""
    hf = _hf_vit(width=64, layers=3, image_size=48)
    vit_path = tmp_path / "vit_tiny_patch16_48.safetensors"
    write_safetensors(_timm_layout(hf.state_dict()), vit_path)
    from clipseg.model.clipseg import CLIPSeg

    clip_config = CLIPSegConfig(
        vision=tiny_config().vision,
        text=TextConfig(width=128, layers=1, heads=2, mlp_width=64, output_dim=32),
        decoder=tiny_config().decoder,
    )
    torch.manual_seed(2)
    clip = perturb_(CLIPSeg(clip_config), seed=2).eval()
    openai_layout = {k.removeprefix("text."): v for k, v in clip.state_dict().items() if not k.startswith("decoder.")}
    clip_path = tmp_path / "clip.safetensors"
    write_safetensors(openai_layout, clip_path)
    return hf, vit_path, clip, clip_path


def test_vitseg_from_timm_and_clip_files(tmp_path):
    hf, vit_path, clip, clip_path = _tiny_vitseg_files(tmp_path)
    decoder = DecoderConfig(reduce_dim=16, heads=4, mlp_width=32, extract_layers=(1, 2))
    model = build_vitseg(vit_path, clip_path, decoder=decoder, heads=HEADS)
    ids = model.tokenizer(["a red circle", "something to sit on"]).ids
    pixels = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids), clip.encode_text(ids))
        resized = F.interpolate(pixels, size=(48, 48), mode="nearest")  # the original's input resize
        reference = hf(pixel_values=resized, output_hidden_states=True)
        features = model.extract_features(pixels)
        torch.testing.assert_close(features[1], reference.hidden_states[3], atol=1e-5, rtol=1e-5)
        expected = reference.last_hidden_state[:, 0] @ model.visual.proj + model.proj_bias
        torch.testing.assert_close(model.encode_image(pixels), expected, atol=1e-5, rtol=1e-5)
        logits = model(pixels, model.encode_text(ids))
    assert logits.shape == (2, 1, 40, 40)
    directory = model.save_pretrained(tmp_path / "vitseg")
    loaded = load_model(str(directory))
    assert isinstance(loaded, ViTSeg)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels, loaded.encode_text(ids)), logits)


def test_baselines_train_only_their_decoder(tmp_path):
    torch.manual_seed(0)
    deconv = CLIPDeconv(tiny_config().replace(extract_layers=(3,)), reduce2_dim=8)
    vision = timm_vision_config(_timm_layout(_hf_vit(layers=4).state_dict()), heads=HEADS, output_dim=32)
    vitseg = ViTSeg(tiny_config().replace(vision=vision))
    for model in (deconv, vitseg):
        frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("decoder.")}
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert trainable == list(model.decoder.parameters())
        optimizer = torch.optim.AdamW(trainable, lr=1e-2)
        pixels, target = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
        conditional = 0.5 * model.encode_text(model.tokenizer(["a", "b"]).ids) + 0.5 * model.encode_image(pixels)
        loss = F.binary_cross_entropy_with_logits(model(pixels, conditional), target)
        loss.backward()
        optimizer.step()
        for key, value in model.state_dict().items():
            if key in frozen:
                assert torch.equal(value, frozen[key]), key
        directory = model.save_pretrained(tmp_path / type(model).__name__)
        reloaded = load_model(directory)
        assert type(reloaded) is type(model)
        for key, value in model.state_dict().items():
            assert torch.equal(reloaded.state_dict()[key], value), key
