"""Reduced-precision paths (bf16/fp16, int8 dynamic quantisation, autocast) and the exactness of the fast paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clipseg.model.transformer import Attention
from clipseg.precision import PRECISIONS, apply_precision, quantize_dynamic
from clipseg.testing import random_model

DEVICES = [
    "cpu",
    *(["cuda"] if torch.cuda.is_available() else []),
    *(["mps"] if torch.backends.mps.is_available() else []),
]
SIZE = 96


def _inputs(model, device="cpu"):
    pixels = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)).to(device)
    ids = model.tokenizer(["a cup", "something to sit on", "the red circle"]).ids.to(device)
    return pixels, ids


def _probabilities(model, pixels, ids):
    with torch.inference_mode():
        features = model.extract_features(pixels)
        conditional = model.encode_text(ids)
        image_index = torch.tensor([0, 1, 1], device=pixels.device)
        logits = model.decode(features, conditional, output_size=(SIZE, SIZE), image_index=image_index)
    return logits.float().sigmoid().cpu()


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return ((a & b).sum() / (a | b).sum().clamp(min=1)).item()


@pytest.fixture(scope="module")
def reference():
    model = random_model()
    pixels, ids = _inputs(model)
    return pixels, ids, _probabilities(model, pixels, ids)


def test_int8_quantises_every_tower_linear_and_stays_close(reference):
    pixels, ids, expected = reference
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    model = quantize_dynamic(random_model())
    for tower in (model.visual, model.text):
        assert not any(isinstance(m, nn.Linear) for m in tower.modules())
        assert all(isinstance(m.in_proj, DynamicInt8Linear) for m in tower.modules() if isinstance(m, Attention))
    assert any(isinstance(m, nn.Linear) for m in model.decoder.modules())  # the decoder stays float32
    got = _probabilities(model, pixels, ids)
    assert got.dtype == torch.float32
    assert (got - expected).abs().max() < 0.05
    assert _mask_iou(got, expected) > 0.95


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("device", DEVICES)
def test_half_precisions_run_and_stay_close(reference, precision, device):
    pixels, ids, expected = reference
    if device == "cpu" and precision == "fp16" and not _cpu_supports_fp16_conv():
        pytest.skip("this torch build has no float16 CPU convolution")
    model = apply_precision(random_model().to(device), precision)
    assert model.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    got = _probabilities(model, pixels.to(device), ids.to(device))
    assert (got - expected).abs().max() < 0.05
    assert _mask_iou(got, expected) > 0.95


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_keeps_float32_weights_and_agrees(reference, device):
    pixels, ids, expected = reference
    model = random_model().to(device)
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    with torch.autocast(device_type=device, dtype=dtype):
        got = _probabilities(model, pixels.to(device), ids.to(device))
    assert model.dtype == torch.float32
    assert (got - expected).abs().max() < 0.05


def test_apply_precision_checks_its_arguments():
    assert PRECISIONS == ("fp32", "bf16", "fp16", "int8")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        apply_precision(random_model(), "int4")
    with pytest.raises(ValueError, match="float32 model"):
        quantize_dynamic(random_model().to(torch.bfloat16))
    assert apply_precision(random_model().to(torch.bfloat16), "fp32").dtype == torch.float32


def test_replaced_in_projection_is_used_exactly():
    attention = Attention(32, 4).eval()
    x = torch.randn(2, 5, 32)
    expected = attention(x, causal=True)
    packed = nn.Linear(32, 96)
    packed.weight, packed.bias = attention.in_proj_weight, attention.in_proj_bias
    attention.in_proj = packed
    torch.testing.assert_close(attention(x, causal=True), expected, atol=0, rtol=0)
    attention.in_proj = nn.Linear(32, 96)
    assert not torch.allclose(attention(x, causal=True), expected)


def test_text_at_real_length_equals_the_padded_computation():
    model = random_model()
    ids = model.tokenizer(["a", "a much longer prompt with many more tokens in it"]).ids
    with torch.inference_mode():
        trimmed = model.text(ids)
        padded = model.text.forward_untrimmed(ids)
        alone = model.text(ids[:1])
    torch.testing.assert_close(trimmed, padded, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, padded[:1], atol=1e-5, rtol=0)


def _cpu_supports_fp16_conv() -> bool:
    try:
        nn.functional.conv2d(torch.ones(1, 1, 2, 2, dtype=torch.float16), torch.ones(1, 1, 1, 1, dtype=torch.float16))
    except RuntimeError:
        return False
    return True


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch, whenever the flags are set
def test_fp32_cpu_inference_takes_onednn_and_matches_the_blas_path(reference, monkeypatch):
    import clipseg.model.onednn as onednn_module

    if not onednn_module.available():
        pytest.skip("this torch build has no oneDNN")
    pixels, ids, expected = reference
    calls = []
    onednn = onednn_module._onednn_linear
    monkeypatch.setattr(onednn_module, "_onednn_linear", lambda *args: calls.append(1) or onednn(*args))
    model = random_model()
    got = _probabilities(model, pixels, ids)
    linears = sum(isinstance(m, nn.Linear) for m in model.modules()) + sum(
        isinstance(m, Attention) for m in model.modules()
    )
    assert len(calls) >= linears - 2  # every projection ran through oneDNN (the pooled-out tails excepted)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    calls.clear()
    with torch.backends.mkldnn.flags(enabled=False):
        torch.testing.assert_close(_probabilities(model, pixels, ids), expected, atol=1e-5, rtol=0)
    assert not calls


def test_training_backpropagates_through_the_decoder_linears():
    # The frozen CLIP may take oneDNN (no gradient needed); the decoder's linears must stay differentiable.
    model = random_model().train()
    pixels, ids = _inputs(model)
    with torch.no_grad():
        conditional = model.encode_text(ids[:2])
    model(pixels, conditional).float().mean().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.decoder.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.visual.parameters())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_packed_weights_give_the_same_outputs_and_save_dense(reference, precision, tmp_path):
    import clipseg
    from clipseg.model.onednn import available, linear

    if not available():
        pytest.skip("this torch build has no oneDNN")
    pixels, ids, expected = reference
    plain = random_model().to(_DTYPES[precision])
    state = {name: tensor.clone() for name, tensor in plain.state_dict().items()}
    unpacked = _probabilities(plain, pixels, ids)
    model = apply_precision(random_model(), precision)
    packed = [p for p in model.parameters() if p.is_mkldnn]
    if precision == "fp32":  # weights as loaded (maybe memory-mapped): the hot path only
        hot = [*model.visual.transformer.resblocks[: max(model.config.decoder.extract_layers) + 1], model.decoder]
        assert not any(p.is_mkldnn for p in model.text.parameters())
    else:  # converted copies: everything
        hot = [model]
    assert len(packed) == sum(isinstance(m, (nn.Linear, Attention)) for h in hot for m in h.modules())
    tolerance = 1e-5 if precision == "fp32" else 2e-2
    torch.testing.assert_close(_probabilities(model, pixels, ids), unpacked, atol=tolerance, rtol=0)
    saved = model.state_dict()
    assert saved.keys() == state.keys() and all(saved[k].to_dense().equal(v) for k, v in state.items())
    reloaded = clipseg.load_model(model.save_pretrained(tmp_path / "saved"))
    assert all(reloaded.state_dict()[k].equal(v.float()) for k, v in state.items())
    with pytest.raises(ValueError, match="packed for CPU inference"):
        linear(torch.randn(3, packed[0].shape[1], dtype=torch.float64), packed[0])


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def test_int8_model_is_not_saved_half_way(tmp_path):
    with pytest.raises(ValueError, match="int8"):
        quantize_dynamic(random_model()).save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_attention_matches_the_fused_kernel(dtype, monkeypatch):
    import clipseg.model.onednn as onednn_module

    if not onednn_module.available():
        pytest.skip("this torch build has no oneDNN")
    batch, heads, tokens, dim = 2, 3, 70, 32  # wide enough heads and enough tokens for the oneDNN path
    packed = torch.randn(batch, tokens, 3, heads, dim, generator=torch.Generator().manual_seed(0)).to(dtype)
    q, k, v = packed.permute(2, 0, 3, 1, 4).unbind(0)  # strided views, as Attention makes them
    sdpa = torch.nn.functional.scaled_dot_product_attention
    expected = sdpa(q.float(), k.float(), v.float())
    fused = []
    counted = lambda *args, **kwargs: fused.append(1) or sdpa(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(onednn_module.F, "scaled_dot_product_attention", counted)
    with torch.inference_mode():
        got = onednn_module.attention(q, k, v, causal=False, dropout=0.0)
    assert not fused and got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, atol=1e-5 if dtype == torch.float32 else 3e-2, rtol=0)
    with torch.inference_mode():  # causal attention (the text tower) keeps the fused kernel
        onednn_module.attention(q, k, v, causal=True, dropout=0.0)
    assert fused


def test_strided_weights_take_the_blas(monkeypatch):
    # oneDNN runs a reference kernel on row-strided weights (seconds instead of milliseconds).
    import clipseg.model.onednn as onednn_module

    monkeypatch.setattr(onednn_module, "_onednn_linear", None if onednn_module._onednn_linear is None else _refuse)
    weight = torch.randn(64, 96)[:, :48]
    x = torch.randn(5, 48)
    with torch.inference_mode():
        torch.testing.assert_close(onednn_module.linear(x, weight), x @ weight.T)


def _refuse(*args):
    raise AssertionError("oneDNN called with a strided weight")


def test_half_precision_on_a_cpu_without_it_warns(monkeypatch):
    import clipseg.precision as precision_module

    monkeypatch.setattr(precision_module, "_native_on_this_cpu", lambda precision: False)
    with pytest.warns(UserWarning, match="no native bf16 arithmetic"):
        apply_precision(random_model(), "bf16")
