"""Export a CLIPSeg model to four ONNX graphs that together do what the PyTorch model does.

    export_onnx_model(clipseg.load_model("CIDAS/clipseg-rd64-refined"), "clipseg-onnx/")

The directory gets:
- `image_features.onnx`: pixels (B, 3, S, S) -> the activations after the decoder's extract layers
  (`activation_0` ... shallow to deep, each (B, 1 + rows*cols, width)); blocks past the deepest are not run;
- `image_embedding_tail.onnx`: the deepest activation -> the CLIP image embedding (B, 512) (the remaining blocks,
  `ln_post`, projection), so an image prompt reuses `image_features` and no weight is stored twice;
- `text_encoder.onnx`: token ids (B, L), L <= 77, -> text embedding (B, 512) (read at the first end-of-text);
- `decoder.onnx`: activations of B_img images, conditional vectors (B, 512) and `image_index` (B,) -> logits
  (B, 1, S, S);
plus `config.json` (ours, with the export size) and the tokenizer files. Batch sizes, prompt count and text
length are dynamic; the image side S is fixed at export (the model's 352 unless `image_size` says otherwise),
because the position embeddings are resampled for one grid. `clipseg.export.runtime.OnnxModel` runs them.
The graphs come from torch's TorchScript-based exporter (`dynamo=False`): it traces the eager model exactly and
needs no onnxscript.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..model.clipseg import CONFIG_FORMAT, CONFIG_NAME, CLIPSeg

OPSET = 17
GRAPHS = ("image_features", "image_embedding_tail", "text_encoder", "decoder")


class _ImageFeatures(nn.Module):
    def __init__(self, model: CLIPSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.extract_features(pixel_values))


class _ImageEmbeddingTail(nn.Module):
    """The vision blocks after the deepest extract layer, then `ln_post` and the projection of the CLS token."""

    def __init__(self, model: CLIPSeg) -> None:
        super().__init__()
        self.visual = model.visual
        self.first_block = max(model.config.decoder.extract_layers) + 1

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        x = activation
        for block in self.visual.transformer.resblocks[self.first_block :]:
            x = block(x)
        return self.visual.ln_post(x[:, 0]) @ self.visual.proj


class _TextEncoder(nn.Module):
    def __init__(self, model: CLIPSeg) -> None:
        super().__init__()
        self.text = model.text

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.text.forward_untrimmed(token_ids)


class _Decoder(nn.Module):
    def __init__(self, model: CLIPSeg, image_size: int) -> None:
        super().__init__()
        self.model, self.image_size = model, image_size

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *features, conditional, image_index = inputs
        size = (self.image_size, self.image_size)
        return self.model.decode(list(features), conditional, output_size=size, image_index=image_index)


def export_onnx_model(
    model: CLIPSeg, out_dir: str | os.PathLike, *, image_size: int | None = None, opset: int = OPSET
) -> Path:
    """Write the four graphs, config and tokenizer of `model` to `out_dir` (created); returns the directory.

    `image_size` is the square input side the graphs accept (default `model.config.image_size`). The model is
    exported in float32 on the CPU (a copy; `model` itself is not changed)."""
    if any(not p.dtype.is_floating_point for p in model.parameters()) or any(
        type(m).__module__.startswith("torch.ao") for m in model.modules()
    ):
        raise ValueError("export a float model: int8-quantised layers have no ONNX export here")
    side = image_size or model.config.image_size
    model.visual.grid_for(side, side)  # a clear error for sizes below one patch
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    float_model = _float_cpu_copy(model)
    config = float_model.config
    width, layers = config.vision.width, len(config.decoder.extract_layers)
    tokens = (side // config.vision.patch_size) ** 2 + 1
    pixels = torch.randn(2, 3, side, side)
    activation_names = [f"activation_{i}" for i in range(layers)]
    activations = tuple(torch.randn(2, tokens, width) for _ in range(layers))
    ids = float_model.tokenizer(["a photo of a cat.", "a dog"]).ids[:, :8]
    conditional = torch.randn(3, config.vision.output_dim)
    image_index = torch.tensor([0, 1, 1])

    graphs = {
        "image_features": (
            _ImageFeatures(float_model),
            (pixels,),
            ["pixel_values"],
            activation_names,
            {"pixel_values": {0: "images"}, **{n: {0: "images"} for n in activation_names}},
        ),
        "image_embedding_tail": (
            _ImageEmbeddingTail(float_model),
            (activations[-1],),
            ["activation"],
            ["image_embedding"],
            {"activation": {0: "images"}, "image_embedding": {0: "images"}},
        ),
        "text_encoder": (
            _TextEncoder(float_model),
            (ids,),
            ["token_ids"],
            ["text_embedding"],
            {"token_ids": {0: "prompts", 1: "length"}, "text_embedding": {0: "prompts"}},
        ),
        "decoder": (
            _Decoder(float_model, side),
            (*activations, conditional, image_index),
            [*activation_names, "conditional", "image_index"],
            ["logits"],
            {
                **{n: {0: "images"} for n in activation_names},
                "conditional": {0: "prompts"},
                "image_index": {0: "prompts"},
                "logits": {0: "prompts"},
            },
        ),
    }
    for name, (module, args, input_names, output_names, dynamic_axes) in graphs.items():
        _export(module, args, out / f"{name}.onnx", input_names, output_names, dynamic_axes, opset)

    float_model.tokenizer.save_pretrained(out)
    exported_config = {"format": CONFIG_FORMAT, **config.replace(image_size=side).to_dict(), "onnx_opset": opset}
    _write_text(out / CONFIG_NAME, json.dumps(exported_config, indent=2))
    return out


def _float_cpu_copy(model: CLIPSeg) -> CLIPSeg:
    """A float32 CPU twin of `model` (sharing storage where it already is one), built without random init."""
    with torch.device("meta"):
        copy = CLIPSeg(model.config, model.tokenizer)
    copy.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()}, assign=True)
    return copy.eval()


def _export(module, args, path: Path, input_names, output_names, dynamic_axes, opset: int) -> None:
    """One graph through the TorchScript-based exporter (exact, no onnxscript needed), written atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python ints taken from shapes (grid size); the grid is fixed by design.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # The legacy exporter is chosen on purpose (see the docstring); its internals call deprecated helpers.
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message=r"The feature will be removed")
        # image_index is checked to be non-negative by the runtime before it reaches the Gather.
        warnings.filterwarnings("ignore", message=r".*aten::index operator of advanced indexing.*")
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
        )
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
