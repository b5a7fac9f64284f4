"""One loading pipeline for every checkpoint format: locate -> read -> detect -> convert -> check -> load."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..model.baselines import CLIPDeconv, ViTSeg
from ..model.clipseg import CONFIG_NAME, CLIPSeg
from ..model.config import CLIPSegConfig, DecoderConfig, TextConfig, VisionConfig
from ..thresholds import THRESHOLDS_NAME, Thresholds
from ..tokenizer import CLIPTokenizer
from . import convert
from .io import CheckpointError, read_state_dict
from .pretrained import DEFAULT_CLIP, HUB_FILE_PATTERNS, HUB_MODELS, ORIGINAL_EXTRACT_LAYERS

# config.json "format" of the directories `save_pretrained` writes -> the class that reads them.
SAVED_FORMATS: dict[str, type[CLIPSeg]] = {cls.config_format: cls for cls in (CLIPSeg, CLIPDeconv, ViTSeg)}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_model(
    source: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    clip: str | os.PathLike | None = None,
    extract_layers: Sequence[int] | None = None,
) -> CLIPSeg:
    """Load a CLIPSeg model, in eval mode, from any released or saved format.

    `source` is one of:
    - a Hugging Face hub id (e.g. "CIDAS/clipseg-rd64-refined", or the short names "rd64-refined", "rd64",
      "rd16"), fetched through the standard HF cache (`HF_HUB_OFFLINE=1` honoured);
    - a local directory in transformers' CLIPSeg layout or written by `CLIPSeg.save_pretrained`;
    - a decoder file of the original repository (rd64-uni.pth, rd64-uni-refined.pth, rd16-uni.pth) together with
      `clip`: OpenAI's TorchScript ViT-B-16.pt, an OpenAI-layout state dict, or a transformers CLIPModel
      directory / hub id (default "openai/clip-vit-base-patch16").
    `extract_layers` overrides the CLIP blocks the decoder reads; for original files it defaults to (3, 6, 9)
    as the original Quickstart and the hub conversions run them (the paper trained with (3, 7, 9)).
    """
    layers = tuple(extract_layers) if extract_layers is not None else None
    path = Path(source)
    if clip is not None and not path.is_file():
        raise ValueError("clip= is only used with an original-repository decoder file")
    if path.is_dir():
        model = _with_thresholds(_load_directory(path, layers), path)
    elif path.is_file():
        model = _load_original(path, clip if clip is not None else DEFAULT_CLIP, layers)
    elif str(source) in HUB_MODELS or _HUB_ID.match(str(source)):
        directory = _download(HUB_MODELS.get(str(source), str(source)))
        model = _with_thresholds(_load_directory(directory, layers), directory)
    else:
        raise FileNotFoundError(f"{source}: no such file or directory, and not a hub id of the form 'org/name'")
    return model.to(device=device, dtype=dtype).eval()


def _with_thresholds(model: CLIPSeg, directory: Path) -> CLIPSeg:
    """Attach the directory's calibrated `thresholds.json` (written by `clipseg train` or by hand), if any."""
    if (directory / THRESHOLDS_NAME).exists():
        model.thresholds = Thresholds.load(directory / THRESHOLDS_NAME)
    return model


def _download(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        directory = Path(snapshot_download(repo_id, allow_patterns=HUB_FILE_PATTERNS))
        if not any(directory.glob("*.safetensors")):
            hf_hub_download(repo_id, "pytorch_model.bin")
            directory = Path(snapshot_download(repo_id, allow_patterns=[*HUB_FILE_PATTERNS, "pytorch_model.bin"]))
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{repo_id}: no such model on the Hugging Face hub (if it is private or gated, log in with `hf auth login`)"
        ) from None
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{repo_id} is not in the Hugging Face cache and the hub cannot be reached (offline): download it once "
            f"with network access (`hf download {repo_id}`) or pass a local directory or file instead"
        ) from None
    except HfHubHTTPError as error:
        raise CheckpointError(f"{repo_id}: download from the Hugging Face hub failed: {error}") from None
    return directory


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: no {path.name} (not a model directory)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None


def _read_directory_weights(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of a model directory and the file (or shard index) they came from, for error messages."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_state_dict(directory / shard))
        return state, str(index)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return read_state_dict(directory / name), str(directory / name)
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin")


def _tokenizer_for(directory: Path) -> CLIPTokenizer | None:
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return CLIPTokenizer.from_pretrained(directory)
    return None


def _load_directory(directory: Path, extract_layers: tuple[int, ...] | None) -> CLIPSeg:
    config_json = _read_json(directory / CONFIG_NAME)
    state, weights_file = _read_directory_weights(directory)
    tokenizer = _tokenizer_for(directory)
    saved_format = config_json.get("format")
    if saved_format in SAVED_FORMATS:
        saved = {k: v for k, v in config_json.items() if k != "format"}
        if extract_layers is not None:
            decoder = saved.get("decoder", {})
            _check_layer_count(extract_layers, decoder.get("extract_layers", DecoderConfig.extract_layers), directory)
            saved["decoder"] = {**decoder, "extract_layers": list(extract_layers)}
        model_class = SAVED_FORMATS[saved_format]
        return build(lambda: model_class.from_saved_config(saved, tokenizer), state, weights_file)
    if config_json.get("model_type") == "clipseg":
        preprocessor_path = directory / "preprocessor_config.json"
        preprocessor = _read_json(preprocessor_path) if preprocessor_path.is_file() else None
        config = convert.hf_clipseg_config_to_ours(config_json, preprocessor, str(directory))
        converted, unused = convert.hf_clipseg_to_ours(state)
    elif config_json.get("model_type") == "clip":
        raise CheckpointError(
            f"{directory}: a CLIP model without a CLIPSeg decoder; load a decoder file with clip={str(directory)!r}"
        )
    else:
        raise CheckpointError(
            f"{directory}: unknown model type {config_json.get('model_type', config_json.get('format'))!r} "
            "(expected a CLIPSeg checkpoint)"
        )
    if extract_layers is not None:
        _check_layer_count(extract_layers, config.decoder.extract_layers, directory)
        config = config.replace(extract_layers=extract_layers)
    if unused:
        raise CheckpointError(f"{weights_file}: unexpected keys {_preview(unused)}")
    return build(lambda: CLIPSeg(config, tokenizer), converted, weights_file)


def _check_layer_count(override: Sequence[int], saved: Sequence[int], directory: Path) -> None:
    if len(override) != len(saved):
        raise ValueError(
            f"extract_layers={tuple(override)} names {len(override)} CLIP blocks but the decoder of {directory} "
            f"reads {len(saved)}"
        )


class CLIPWeights(NamedTuple):
    """CLIP weights in our key layout (`visual.*`, `text.*`) with the architecture they imply."""

    state: dict[str, torch.Tensor]
    vision: VisionConfig
    text: TextConfig
    tokenizer: CLIPTokenizer | None  # None: the weights came without one (OpenAI's vocabulary applies)


def load_clip(source: str | os.PathLike) -> CLIPWeights:
    """CLIP weights from any CLIP layout: OpenAI's TorchScript archive or state dict, a transformers CLIPModel
    directory or hub id. Used for the original decoder files, for ViTSeg's text tower and by the trainer."""
    path = Path(source)
    if not path.exists() and _HUB_ID.match(str(source)):
        path = _download(str(source))
    if path.is_dir():
        config_json = _read_json(path / CONFIG_NAME)
        if config_json.get("model_type") != "clip":
            raise CheckpointError(f"{path}: expected a transformers CLIP model (model_type 'clip')")
        state, unused = convert.hf_clip_to_ours(_read_directory_weights(path)[0])
        vision, text = convert.hf_towers_to_ours(config_json, str(path))
        tokenizer = _tokenizer_for(path)
    elif path.is_file():
        raw = read_state_dict(path)
        if "vision_model.embeddings.class_embedding" in raw:
            state, unused = convert.hf_clip_to_ours(raw)
        else:
            state, unused = convert.openai_clip_to_ours(raw)
        vision, text = convert.openai_towers_from_shapes(state, str(path))
        tokenizer = None
    else:
        raise FileNotFoundError(f"{source}: no such CLIP weights file or directory")
    if unused:
        raise CheckpointError(f"{source}: unexpected keys in the CLIP weights {_preview(unused)}")
    return CLIPWeights(state, vision, text, tokenizer)


def _load_original(path: Path, clip: str | os.PathLike, extract_layers: tuple[int, ...] | None) -> CLIPSeg:
    raw = read_state_dict(path)
    if "film_mul.weight" not in raw:
        raise CheckpointError(
            f"{path}: not an original CLIPSeg checkpoint (no film_mul.weight); "
            "pass a directory for transformers / clipseg checkpoints"
        )
    state, unused = convert.original_to_ours(raw)
    tokenizer = None
    if "visual.class_embedding" in state:  # the full model was saved, CLIP included
        vision, text = convert.openai_towers_from_shapes(state, str(path))
    else:
        clip_weights = load_clip(clip)
        state |= clip_weights.state
        vision, text, tokenizer = clip_weights.vision, clip_weights.text, clip_weights.tokenizer
    if unused:
        raise CheckpointError(f"{path}: unexpected keys {_preview(unused)}")
    decoder = convert.original_decoder_from_shapes(state, extract_layers or ORIGINAL_EXTRACT_LAYERS, str(path))
    config = CLIPSegConfig(vision=vision, text=text, decoder=decoder)
    return build(lambda: CLIPSeg(config, tokenizer), state, str(path))


def build(
    make_model: Callable[[], CLIPSeg],
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    may_be_missing: tuple[str, ...] = (),
) -> CLIPSeg:
    """`make_model()` holding the tensors of `state`, the key sets checked exactly: every key the model has must be
    in `state` except those starting with a prefix in `may_be_missing`, which keep their fresh initialisation.
    Without such prefixes the model is built without random init (meta device) and takes the tensors themselves;
    with them, it is initialised and the tensors are copied in."""
    on_meta = not may_be_missing
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        model = make_model()
    expected = set(model.state_dict())
    missing = {key for key in expected - set(state) if not key.startswith(may_be_missing)}
    extra = set(state) - expected
    if missing or extra:
        parts = [f"missing keys {_preview(missing)}" if missing else "", f"unexpected keys {_preview(extra)}" if extra else ""]
        raise CheckpointError(f"{source}: " + "; ".join(p for p in parts if p))
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(tensors, strict=on_meta, assign=on_meta)
    except RuntimeError as error:
        mismatches = re.findall(r"size mismatch for ([\w.]+)", str(error))
        raise CheckpointError(f"{source}: tensor shapes do not fit the architecture: {_preview(mismatches)}") from None
    return model


def _preview(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
