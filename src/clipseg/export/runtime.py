"""Run exported CLIPSeg graphs with onnxruntime behind the model methods the Predictor calls.

    model = OnnxModel("clipseg-onnx/")
    predictor = clipseg.Predictor(model)       # as with a PyTorch model

`OnnxModel` satisfies `clipseg.model.interface.SegmentationModel`: `config`, `tokenizer`, `device`, `dtype`,
`eval()`, `extract_features`, `encode_text`, `encode_image` and `decode`, taking and returning torch tensors
(float32, CPU). Text runs at its real length, as in PyTorch (causal attention makes the padding after the last
end-of-text token irrelevant).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..model.clip import TokenMaskMode
from ..model.clipseg import CONFIG_NAME
from ..model.config import CLIPSegConfig
from ..model.interface import check_pairing
from ..tokenizer import CLIPTokenizer
from .onnx import GRAPHS


class OnnxModel:
    """The four graphs written by `export_onnx_model`, run by onnxruntime sessions.

    Args:
        directory: the export directory.
        providers: onnxruntime execution providers (default: CPU).
        threads: intra-op threads per session (default: onnxruntime's choice, one per physical core).
    """

    def __init__(
        self, directory: str | os.PathLike, *, providers: list[str] | None = None, threads: int | None = None
    ) -> None:
        import onnxruntime

        directory = Path(directory)
        missing = _missing_files(directory)
        if missing:
            raise FileNotFoundError(
                f"{directory}: not a clipseg ONNX export (missing {', '.join(missing)})"
            )
        data = json.loads((directory / CONFIG_NAME).read_text())
        self.config = CLIPSegConfig.from_dict({k: v for k, v in data.items() if k not in ("format", "onnx_opset")})
        self.tokenizer = CLIPTokenizer.from_pretrained(directory)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = providers or ["CPUExecutionProvider"]
        self.sessions = {
            name: onnxruntime.InferenceSession(str(directory / _file(name)), options, providers=providers)
            for name in GRAPHS
        }
        self.directory = directory

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def eval(self) -> OnnxModel:
        """No-op (the graphs are inference graphs); here so that code written for nn.Module works."""
        return self

    def extract_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Normalised images (B, 3, S, S), S the export size -> activations after the extract layers."""
        side = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, side, side):
            raise ValueError(
                f"pixel_values must have shape (B, 3, {side}, {side}) for this ONNX export, got {tuple(pixel_values.shape)}"
            )
        outputs = self._run("image_features", pixel_values=_numpy(pixel_values, np.float32))
        return [torch.from_numpy(output) for output in outputs]

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> conditional vectors (B, 512)."""
        context = self.config.text.context_length
        if token_ids.ndim != 2 or not 0 < token_ids.shape[1] <= context:
            raise ValueError(f"token_ids must have shape (B, L<={context}), got {tuple(token_ids.shape)}")
        ids = _numpy(token_ids, np.int64)
        length = int(ids.argmax(axis=1).max()) + 1
        (embedding,) = self._run("text_encoder", token_ids=np.ascontiguousarray(ids[:, :length]))
        return torch.from_numpy(embedding)

    def encode_image(
        self,
        pixel_values: torch.Tensor,
        *,
        token_mask: torch.Tensor | None = None,
        token_mask_mode: TokenMaskMode = "cls_last",
    ) -> torch.Tensor:
        """Normalised support images (B, 3, S, S) -> CLIP image embeddings (B, 512)."""
        if token_mask is not None:
            raise ValueError(
                "CLIP-internal attention masking (token_mask) is not part of the ONNX graphs: use a visual prompt "
                "variant without it, or the PyTorch backend"
            )
        deepest = self.extract_features(pixel_values)[-1]
        (embedding,) = self._run("image_embedding_tail", activation=deepest.numpy())
        return torch.from_numpy(embedding)

    def decode(
        self,
        features: list[torch.Tensor],
        conditional: torch.Tensor,
        *,
        output_size: tuple[int, int],
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder only: features of B_img images and B conditional vectors -> logits (B, 1, S, S); pairing as
        `CLIPSeg.decode` (image_index, else 1:1, else every prompt on the single image)."""
        side = self.config.image_size
        if tuple(output_size) != (side, side):
            raise ValueError(f"this ONNX export decodes at {side}x{side}, not {tuple(output_size)}")
        images, prompts = features[0].shape[0], conditional.shape[0]
        check_pairing(images, prompts, image_index)
        if image_index is None:
            image_index = torch.arange(prompts) if images == prompts else torch.zeros(prompts, dtype=torch.long)
        index = _numpy(image_index, np.int64)
        inputs = {f"activation_{i}": _numpy(f, np.float32) for i, f in enumerate(features)}
        (logits,) = self._run("decoder", **inputs, conditional=_numpy(conditional, np.float32), image_index=index)
        return torch.from_numpy(logits)

    def _run(self, graph: str, **inputs: np.ndarray) -> list[np.ndarray]:
        return self.sessions[graph].run(None, inputs)

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.directory)!r}, image_size={self.config.image_size})"


def is_onnx_export(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by `export_onnx_model` (every graph and the config are there)."""
    return Path(path).is_dir() and not _missing_files(Path(path))


def _missing_files(directory: Path) -> list[str]:
    return [_file(name) for name in (*GRAPHS, CONFIG_NAME) if not (directory / _file(name)).is_file()]


def _file(name: str) -> str:
    return name if name.endswith(".json") else f"{name}.onnx"


def _numpy(tensor: torch.Tensor, dtype: type) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)
