"""Writing the ecosystem's layouts: transformers' CLIPSeg directory and the original repository's decoder file, checked
by loading them with transformers and with our reader of the original files (written independently of the writers)."""

from __future__ import annotations

import json

import pytest
import torch
from test_checkpoints import hf_to_openai_clip, hf_to_original_decoder
from typer.testing import CliRunner

import clipseg
from clipseg.checkpoints.convert import ConversionError, hf_clipseg_to_ours
from clipseg.checkpoints.publish import ours_to_hf_clipseg, ours_to_original, save_model
from clipseg.model.clipseg import CLIPSeg
from clipseg.model.config import CLIPSegConfig
from clipseg.testing import perturb_, random_model, random_transformers_clipseg, tiny_config

transformers = pytest.importorskip("transformers")

PROMPTS = ["a cup", "something to sit on"]


def _logits_both(ours: CLIPSeg, theirs, size: int):
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    ids = ours.tokenizer(PROMPTS).ids
    with torch.inference_mode():
        expected = ours(pixels, ours.encode_text(ids))[:, 0]
        got = theirs(input_ids=ids, pixel_values=pixels).logits
    return got, expected


@pytest.mark.parametrize("head", ["simple", "refined"])
def test_transformers_layout_loads_in_transformers_with_the_same_logits(tmp_path, head):
    model = random_model(tiny_config(head).replace(image_size=96), seed=11)
    model.save_pretrained(tmp_path / "hf", layout="transformers")
    theirs = transformers.CLIPSegForImageSegmentation.from_pretrained(tmp_path / "hf").eval()
    got, expected = _logits_both(model, theirs, 96)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tmp_path / "hf")
    for theirs_ids, our_ids in zip(tokenizer(PROMPTS).input_ids, model.tokenizer(PROMPTS).ids.tolist()):
        assert theirs_ids == our_ids[: len(theirs_ids)]  # the same tokens; padding differs by convention only
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    assert processor.size == {"height": 96, "width": 96}
    assert list(processor.image_mean) == [0.485, 0.456, 0.406] and list(processor.image_std) == [0.229, 0.224, 0.225]


def test_round_trips_through_every_layout_are_lossless(tmp_path):
    model = random_model(tiny_config("refined").replace(image_size=80, extract_layers=(1, 3)), seed=12)
    state = model.state_dict()
    save_model(model, tmp_path / "hf", "transformers")
    back = clipseg.load_model(tmp_path / "hf")
    assert back.config == model.config
    assert back.state_dict().keys() == state.keys()
    assert all(torch.equal(back.state_dict()[key], value) for key, value in state.items())
    save_model(back, tmp_path / "ours", "clipseg")
    again = clipseg.load_model(tmp_path / "ours")
    assert again.config == model.config and all(torch.equal(again.state_dict()[k], v) for k, v in state.items())
    # original layout: decoder keys only; with the same CLIP, the decoder comes back bit for bit
    decoder = ours_to_original(state)
    from clipseg.checkpoints.convert import original_to_ours

    restored, unused = original_to_ours(decoder)
    assert not unused and restored.keys() == {k for k in state if k.startswith("decoder.")}
    assert all(torch.equal(restored[k], state[k]) for k in restored)


def test_key_mapping_is_the_exact_inverse_of_transformers_layout():
    """Independent check: a transformers model's own state dict -> ours (the reader) -> transformers (the writer)."""
    for head in ("simple", "refined"):
        reference = random_transformers_clipseg(tiny_config(head), seed=4)
        state = reference.state_dict()
        ours, unused = hf_clipseg_to_ours(state)
        assert not unused
        back = ours_to_hf_clipseg(ours)
        assert back.keys() == state.keys()
        for key, value in state.items():
            if key != "clip.logit_scale":  # CLIPSeg never uses it; we write CLIP's initial value
                assert torch.equal(back[key], value), key
        # and the original layout equals the independent transformers -> original conversion of the tests
        expected = hf_to_original_decoder(state)
        assert {k for k in expected if not k.startswith("reduce.")} == ours_to_original(ours).keys()
        assert all(torch.equal(ours_to_original(ours)[k], expected[k]) for k in ours_to_original(ours))


@pytest.mark.slow
def test_original_layout_of_a_vit_b16_model_loads_with_openai_clip(tmp_path):
    """A full-size (ViT-B/16, rd64-refined) model written as the original decoder file runs again from that file
    plus OpenAI-layout CLIP weights, with the layers recorded in clipseg_args.json."""
    config = CLIPSegConfig().replace(head="refined", extract_layers=(3, 7, 9))
    torch.manual_seed(0)
    model = perturb_(CLIPSeg(config), seed=0).eval()
    save_model(model, tmp_path / "orig", "original")
    arguments = json.loads((tmp_path / "orig" / "clipseg_args.json").read_text())
    assert arguments["weights"] == "rd64-uni-refined.pth" and arguments["extract_layers"] == [3, 7, 9]
    assert arguments["complex_trans_conv"] is True and arguments["reduce_dim"] == 64
    decoder_keys = torch.load(tmp_path / "orig" / "rd64-uni-refined.pth", weights_only=True).keys()
    assert {"film_mul.weight", "reduces.2.bias", "blocks.0.self_attn.in_proj_weight", "trans_conv.4.weight"} <= set(decoder_keys)
    openai = {k.removeprefix("text."): v for k, v in model.state_dict().items() if not k.startswith("decoder.")}
    torch.save(openai, tmp_path / "clip.pt")
    loaded = clipseg.load_model(tmp_path / "orig" / "rd64-uni-refined.pth", clip=tmp_path / "clip.pt",
                                extract_layers=tuple(arguments["extract_layers"]))
    pixels = torch.randn(1, 3, 352, 352, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        conditional = model.encode_text(model.tokenizer(["a cup"]).ids)
        torch.testing.assert_close(loaded(pixels, conditional), model(pixels, conditional), atol=1e-5, rtol=0)


def test_layouts_that_cannot_express_the_model_are_refused_before_writing(tmp_path):
    tiny = random_model(seed=13)
    with pytest.raises(ConversionError, match="original code runs OpenAI's CLIP ViT-B/16 only"):
        save_model(tiny, tmp_path / "a", "original")
    assert not (tmp_path / "a").exists()
    other_heads = CLIPSeg(CLIPSegConfig().replace(heads=2))
    with pytest.raises(ConversionError, match="4 decoder heads"):
        save_model(other_heads, tmp_path / "b", "original")
    with pytest.raises(ValueError, match="unknown layout 'onnx'; expected one of clipseg, transformers, original"):
        tiny.save_pretrained(tmp_path / "c", layout="onnx")
    with pytest.raises(ConversionError, match="unknown layout 'onnx'"):
        save_model(tiny, tmp_path / "c", "onnx")
    from clipseg.model.baselines import CLIPDeconv

    deconv = CLIPDeconv(tiny_config().replace(extract_layers=(3,)))
    with pytest.raises(ConversionError, match="a CLIPDeconv model cannot be written in the transformers layout"):
        save_model(deconv, tmp_path / "d", "transformers")
    assert not any((tmp_path / name).exists() for name in "bcd")


def test_cli_convert_to_each_layout(tmp_path):
    from clipseg import cli

    random_model(seed=14).save_pretrained(tmp_path / "model")
    runner = CliRunner()
    result = runner.invoke(cli.app, ["convert", str(tmp_path / "model"), str(tmp_path / "hf"), "--to", "transformers"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "clipseg"
    theirs = transformers.CLIPSegForImageSegmentation.from_pretrained(tmp_path / "hf").eval()
    got, expected = _logits_both(clipseg.load_model(tmp_path / "model"), theirs, 64)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    refused = runner.invoke(cli.app, ["convert", str(tmp_path / "model"), str(tmp_path / "orig"), "--to", "original"])
    assert refused.exit_code == 2 and "cannot write" in refused.output and "ViT-B/16 only" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "orig").exists()
