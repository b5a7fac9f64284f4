"""Model behaviour no reference implementation covers: non-square inputs, early exit, parameter count, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipseg import CLIPSeg
from clipseg.model.config import PRESETS
from clipseg.testing import random_model, tiny_config


# ---- an explicit float64 computation of the paper's steps, written from the formulas, not from our modules ----


def _layer_norm(x, prefix, state, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * state[prefix + ".weight"] + state[prefix + ".bias"]


def _attention(x, w_in, b_in, w_out, b_out, heads):
    tokens, width = x.shape
    q, k, v = (x @ w_in.T + b_in).split(width, dim=-1)
    out = torch.zeros_like(x)
    size = width // heads
    for h in range(heads):
        sl = slice(h * size, (h + 1) * size)
        weights = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(size), dim=-1)
        out[:, sl] = weights @ v[:, sl]
    return out @ w_out.T + b_out


def _reference_logits(state, config, image, conditional):
    """One image (3, H, W) and one conditional vector -> logits (H', W') in float64."""
    vision, dec = config.vision, config.decoder
    patch = vision.patch_size
    rows, cols = image.shape[1] // patch, image.shape[2] // patch
    patches = image[:, : rows * patch, : cols * patch].reshape(3, rows, patch, cols, patch)
    patches = patches.permute(1, 3, 0, 2, 4).reshape(rows * cols, 3 * patch * patch)
    tokens = patches @ state["visual.conv1.weight"].reshape(vision.width, -1).T
    table = state["visual.positional_embedding"]
    grid = vision.grid_size
    resampled = F.interpolate(table[1:].T.reshape(1, -1, grid, grid), size=(rows, cols), mode="bicubic",
                              align_corners=False)[0].reshape(vision.width, -1).T
    x = torch.cat([state["visual.class_embedding"][None], tokens]) + torch.cat([table[:1], resampled])
    x = _layer_norm(x, "visual.ln_pre", state)
    activations = {}
    for i in range(max(dec.extract_layers) + 1):
        p = f"visual.transformer.resblocks.{i}."
        h = _layer_norm(x, p + "ln_1", state)
        x = x + _attention(h, state[p + "attn.in_proj_weight"], state[p + "attn.in_proj_bias"],
                           state[p + "attn.out_proj.weight"], state[p + "attn.out_proj.bias"], vision.heads)
        h = _layer_norm(x, p + "ln_2", state) @ state[p + "mlp.c_fc.weight"].T + state[p + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ state[p + "mlp.c_proj.weight"].T + state[p + "mlp.c_proj.bias"]
        activations[i] = x
    a = None
    for k, layer in enumerate(reversed(dec.extract_layers)):
        p = f"decoder.reduces.{k}."
        reduced = activations[layer] @ state[p + "weight"].T + state[p + "bias"]
        a = reduced if a is None else reduced + a
        if k == dec.cond_layer:
            mul = conditional @ state["decoder.film_mul.weight"].T + state["decoder.film_mul.bias"]
            add = conditional @ state["decoder.film_add.weight"].T + state["decoder.film_add.bias"]
            a = mul * a + add
        p = f"decoder.blocks.{k}."
        a = _layer_norm(a + _attention(a, state[p + "self_attn.in_proj_weight"], state[p + "self_attn.in_proj_bias"],
                                       state[p + "self_attn.out_proj.weight"], state[p + "self_attn.out_proj.bias"],
                                       dec.heads), p + "norm1", state)
        h = torch.relu(a @ state[p + "linear1.weight"].T + state[p + "linear1.bias"])
        a = _layer_norm(a + h @ state[p + "linear2.weight"].T + state[p + "linear2.bias"], p + "norm2", state)
    grid_tokens = a[1:].T.reshape(1, dec.reduce_dim, rows, cols)
    return F.conv_transpose2d(grid_tokens, state["decoder.trans_conv.weight"], state["decoder.trans_conv.bias"],
                              stride=patch)[0, 0]


@pytest.mark.parametrize("size", [(352, 480), (480, 352), (224, 224), (100, 260)])
def test_any_input_size_matches_explicit_float64_computation(size):
    model = random_model(seed=11)
    state = {k: v.double() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    images = torch.randn(2, 3, *size)
    conditional = torch.randn(2, model.config.vision.output_dim)
    with torch.inference_mode():
        logits = model(images, conditional)
    assert logits.shape == (2, 1, *size)
    for b in range(2):
        expected = _reference_logits(state, model.config, images[b].double(), conditional[b].double())
        if expected.shape != size:  # sides that are not multiples of the patch: bilinear to the input size
            expected = F.interpolate(expected[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        assert (logits[b, 0].double() - expected).abs().max() <= 1e-4
    assert logits.std() > 1e-2


def test_square_input_through_the_general_path_equals_the_square_path():
    """The resampled position table of a square grid is what a square-only implementation computes."""
    model = random_model(seed=2)
    table = model.visual.positional_embedding
    grid = model.config.vision.grid_size
    square = F.interpolate(table[1:].T.reshape(1, -1, grid, grid), size=(22, 22), mode="bicubic",
                           align_corners=False).reshape(table.shape[1], -1).T
    assert torch.equal(model.visual.positions((22, 22)), torch.cat([table[:1], square]))
    assert model.visual.positions((grid, grid)) is table  # the trained grid is used as is


def test_position_cache_follows_weight_changes():
    model = random_model(seed=3)
    before = model.visual.positions((5, 7)).clone()
    assert model.visual.positions((5, 7)) is model.visual.positions((5, 7))
    with torch.no_grad():
        model.visual.positional_embedding.mul_(2)
    torch.testing.assert_close(model.visual.positions((5, 7)), 2 * before)


def test_backbone_stops_after_the_deepest_extract_layer():
    model = random_model(seed=4)
    ran = []
    for index, block in enumerate(model.visual.transformer.resblocks):
        block.register_forward_hook(lambda *_, index=index: ran.append(index))
    with torch.inference_mode():
        features = model.extract_features(torch.randn(1, 3, 64, 64))
    assert ran == list(range(max(model.config.decoder.extract_layers) + 1))
    assert len(features) == len(model.config.decoder.extract_layers)
    ran.clear()
    model.encode_image(torch.randn(1, 3, 64, 64))
    assert ran == list(range(model.config.vision.layers))


def test_vit_b16_extracts_blocks_3_6_9_and_runs_ten_blocks():
    with torch.device("meta"):
        model = CLIPSeg(PRESETS["rd64"])
    ran = []
    for index, block in enumerate(model.visual.transformer.resblocks):
        block.register_forward_hook(lambda *_, index=index: ran.append(index))
    model.extract_features(torch.empty(1, 3, 352, 352, device="meta"))
    assert ran == list(range(10))


def test_rd64_decoder_parameter_count():
    """1,073,153 parameters are used by forward; the paper's 1,122,305 counts the original code's unused
    `reduce` layer (768*64 + 64 = 49,216 more, which gives 1,122,369: the paper is off by 64)."""
    with torch.device("meta"):
        simple = CLIPSeg(PRESETS["rd64"])
        rd16 = CLIPSeg(PRESETS["rd16"])
    count = sum(p.numel() for p in simple.decoder.parameters())
    assert count == 1_073_153
    assert count + 768 * 64 + 64 == 1_122_369
    assert sum(p.numel() for p in rd16.decoder.parameters()) < count


def test_gradients_reach_only_the_decoder():
    model = random_model(seed=5).train()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        conditional = model.encode_text(model.tokenizer(["a cat", "a dog"]).ids)
    loss = F.binary_cross_entropy_with_logits(model(images, conditional), torch.rand(2, 1, 64, 64))
    loss.backward()
    assert all(p.grad is None for p in model.visual.parameters())
    assert all(p.grad is None for p in model.text.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())


def test_text_padding_and_length_do_not_change_the_embedding():
    model = random_model(seed=6)
    ids = model.tokenizer(["a photo of a cat", "dog"]).ids
    with torch.inference_mode():
        full = model.encode_text(ids)
        trimmed = model.encode_text(ids[:, :8])
        alone = model.encode_text(ids[1:])
    torch.testing.assert_close(full, trimmed, atol=1e-5, rtol=0)
    torch.testing.assert_close(full[1:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["cls_last", "cls_all", "all_all"])
def test_token_mask_modes(mode):
    model = random_model(seed=7)
    image = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 64, 64)
    mask[:, :32, :32] = 1
    with torch.inference_mode():
        plain = model.encode_image(image)
        ones = model.encode_image(image, token_mask=torch.ones(1, 64, 64), token_mask_mode=mode)
        masked = model.encode_image(image, token_mask=mask, token_mask_mode=mode)
    torch.testing.assert_close(ones, plain, atol=1e-5, rtol=0)  # an all-ones mask changes nothing
    assert (masked - plain).abs().max() > 1e-4


def test_bad_inputs_give_clear_errors():
    model = random_model(seed=8)
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        model.extract_features(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        model.extract_features(torch.randn(1, 3, 8, 64))
    with pytest.raises(ValueError, match="2 images but 3 conditional"):
        model(torch.randn(2, 3, 64, 64), torch.randn(3, 32))
    with pytest.raises(ValueError, match="token_ids"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="strictly increasing"):
        tiny_config().replace(extract_layers=(2, 1, 3))
