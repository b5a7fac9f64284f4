"""One loading pipeline for every checkpoint format: locate -> read -> detect -> convert -> check -> load."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NamedTuple

import torch

from ..model.baselines import CLIPDeconv, ViTSeg
from ..model.clipseg import CONFIG_NAME, CLIPSeg
from ..fileio import MAX_CONFIG_BYTES, UnreadableFileError, read_json_file
from ..messages import one_line
from ..model.config import CLIPSegConfig, ConfigError, DecoderConfig, TextConfig, VisionConfig
from ..thresholds import THRESHOLDS_NAME, Thresholds
from ..tokenizer import CLIPTokenizer
from . import convert
from .errors import CheckpointError
from .io import declared_state_dict, read_state_dict, read_state_dict_head
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
    elif path.exists() and not path.is_file():
        read_state_dict_head(path)  # raises: a FIFO, socket or device is not a weight file
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
    """A JSON object from a model folder (a regular file of bounded size), else a one-line CheckpointError."""
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"{path.parent}: no {path.name} (not a model directory)")
    try:
        data = read_json_file(path, MAX_CONFIG_BYTES, path.name)
    except (UnreadableFileError, FileNotFoundError) as error:
        raise CheckpointError(str(error)) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(data).__name__}, expected an object of settings")
    return data


def _weight_files(directory: Path) -> tuple[list[Path], str]:
    """The weight files of a model directory and the file (or shard index) they come from, for error messages.

    Shard names in an index must be plain relative paths inside `directory` (no absolute paths, no '..')."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no weight_map (an object mapping tensor names to shard files)")
        shards = sorted({_confined_shard(directory, index, name) for name in weight_map.values()})
        return [directory / shard for shard in shards], str(index)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).exists():
            return [directory / name], str(directory / name)
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin")


def _confined_shard(directory: Path, index: Path, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{index}: weight_map value {name!r} is not a shard file name")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if PureWindowsPath(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts or ":" in name:
        raise CheckpointError(f"{index}: shard {name!r} lies outside the model directory {directory}")
    return "/".join(parts)


def _read_weights(files: Sequence[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_state_dict(file))
    return state


def _declared_weights(files: Sequence[Path]) -> dict[str, torch.Tensor] | None:
    """Meta tensors of what safetensors headers declare (None if any file is another format)."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        declared = declared_state_dict(file)
        if declared is None:
            return None
        state.update(declared)
    return state


def _read_directory_weights(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of a model directory and the file (or shard index) they came from, for error messages."""
    files, source = _weight_files(directory)
    return _read_weights(files), source


def _tokenizer_for(directory: Path) -> CLIPTokenizer | None:
    """The tokenizer saved with a model: None if the folder has none (OpenAI's vocabulary then applies); half a
    tokenizer (vocab.json without merges.txt, or either not a file) is an error rather than a silent fallback."""
    files = [directory / "vocab.json", directory / "merges.txt"]
    present = [file for file in files if file.exists() or file.is_symlink()]
    if not present:
        return None
    if len(present) == 1:
        missing = next(file for file in files if file not in present)
        raise CheckpointError(f"{present[0]} has no {missing.name} beside it; a tokenizer needs both files")
    try:
        return CLIPTokenizer.from_pretrained(directory)
    except (UnreadableFileError, FileNotFoundError, ValueError) as error:
        raise CheckpointError(one_line(error)) from None


def _same_layout(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    return dict(state), []


def _load_directory(directory: Path, extract_layers: tuple[int, ...] | None) -> CLIPSeg:
    config_path = directory / CONFIG_NAME
    config_json = _read_json(config_path)
    files, weights_file = _weight_files(directory)
    tokenizer = _tokenizer_for(directory)
    saved_format = config_json.get("format")
    if saved_format in SAVED_FORMATS:
        saved = {k: v for k, v in config_json.items() if k != "format"}
        if extract_layers is not None:
            decoder = saved.get("decoder", {})
            if not isinstance(decoder, dict):
                raise CheckpointError(f"{config_path}: decoder is a {type(decoder).__name__}, expected an object")
            _check_layer_count(extract_layers, decoder.get("extract_layers", DecoderConfig.extract_layers), directory)
            saved["decoder"] = {**decoder, "extract_layers": list(extract_layers)}
        model_class = SAVED_FORMATS[saved_format]
        try:
            with torch.device("meta"):
                model = model_class.from_saved_config(saved, tokenizer)
        except (ConfigError, KeyError, TypeError) as error:
            raise CheckpointError(f"{config_path}: {one_line(error)}") from None
        return _fill(model, files, weights_file, _same_layout)
    if config_json.get("model_type") == "clipseg":
        preprocessor_path = directory / "preprocessor_config.json"
        has_preprocessor = preprocessor_path.exists() or preprocessor_path.is_symlink()
        preprocessor = _read_json(preprocessor_path) if has_preprocessor else None
        config = convert.hf_clipseg_config_to_ours(config_json, preprocessor, str(config_path), str(preprocessor_path))
        converter = convert.hf_clipseg_to_ours
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
        config = _replaced_layers(config, extract_layers)
    _check_tokenizer_fits(tokenizer, config, directory)
    with torch.device("meta"):
        model = CLIPSeg(config, tokenizer)
    return _fill(model, files, weights_file, converter)


def _replaced_layers(config: CLIPSegConfig, extract_layers: tuple[int, ...]) -> CLIPSegConfig:
    try:
        return config.replace(extract_layers=extract_layers)
    except ConfigError as error:
        raise ValueError(f"--extract-layers: {error}") from None


def _check_tokenizer_fits(tokenizer: CLIPTokenizer | None, config: CLIPSegConfig, directory: Path) -> None:
    if tokenizer is not None and tokenizer.max_id >= config.text.vocab_size:
        raise CheckpointError(
            f"{directory / 'vocab.json'}: token id {tokenizer.max_id} does not fit the text tower's "
            f"{config.text.vocab_size} token embeddings"
        )


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
        vision, text = convert.hf_towers_to_ours(config_json, str(path / CONFIG_NAME))
        state, unused = convert.hf_clip_to_ours(_read_directory_weights(path)[0])
        tokenizer = _tokenizer_for(path)
    elif path.is_file():
        raw = read_state_dict(path)
        if "vision_model.embeddings.class_embedding" in raw:
            state, unused = convert.hf_clip_to_ours(raw)
        else:
            state, unused = convert.openai_clip_to_ours(raw)
        vision, text = convert.openai_towers_from_shapes(state, str(path))
        tokenizer = None
    elif path.exists():
        read_state_dict_head(path)  # raises: a FIFO, socket or device is not a weight file
        raise CheckpointError(f"{path}: not a CLIP weights file or directory")
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
    return build(lambda: CLIPSeg(CLIPSegConfig(vision=vision, text=text, decoder=decoder), tokenizer), state, str(path))


def build(
    make_model: Callable[[], CLIPSeg],
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    may_be_missing: tuple[str, ...] = (),
) -> CLIPSeg:
    """`make_model()` holding the tensors of `state`, checked by `_check_fits`: every key the model has must be in
    `state` except those starting with a prefix in `may_be_missing`, which keep their fresh initialisation.
    Without such prefixes the model is built without random init (meta device) and takes the tensors themselves;
    with them, it is initialised and the tensors are copied in."""
    on_meta = not may_be_missing
    try:
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            model = make_model()
    except ConfigError as error:
        raise CheckpointError(f"{source}: the tensor shapes imply an invalid architecture ({error})") from None
    return _assign(model, state, source, may_be_missing=may_be_missing)


def _fill(model: CLIPSeg, files: Sequence[Path], source: str, converter: Callable) -> CLIPSeg:
    """Give a meta-device model the tensors of `files` in `converter`'s layout. The shapes that safetensors
    headers declare are checked against the architecture before any tensor data is read."""
    declared = _declared_weights(files)
    if declared is not None:
        _check_fits(model, _converted(converter, declared, source), source)
    return _assign(model, _converted(converter, _read_weights(files), source), source)


def _converted(converter: Callable, state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    converted, unused = converter(state)
    if unused:
        raise CheckpointError(f"{source}: unexpected keys {_preview(unused)}")
    return converted


def _check_fits(
    model: CLIPSeg, state: Mapping[str, torch.Tensor], source: str, *, may_be_missing: tuple[str, ...] = ()
) -> None:
    """The key sets must match exactly (but for keys starting with a `may_be_missing` prefix), every tensor must
    have the expected shape and a compatible dtype (floating point where the model has floating point)."""
    expected = model.state_dict()
    missing = {key for key in set(expected) - set(state) if not key.startswith(may_be_missing)}
    extra = set(state) - set(expected)
    if missing or extra:
        parts = [f"missing keys {_preview(missing)}" if missing else "", f"unexpected keys {_preview(extra)}" if extra else ""]
        raise CheckpointError(f"{source}: " + "; ".join(p for p in parts if p))
    wrong_dtype = {
        key: tensor.dtype for key, tensor in state.items() if tensor.is_floating_point() != expected[key].is_floating_point()
    }
    if wrong_dtype:
        dtypes = ", ".join(sorted({str(dtype).removeprefix("torch.") for dtype in wrong_dtype.values()}))
        raise CheckpointError(
            f"{source}: tensors of dtype {dtypes} where the architecture has floating point (or the reverse): "
            f"{_preview(wrong_dtype)}"
        )
    wrong_shape = [key for key, tensor in state.items() if tensor.shape != expected[key].shape]
    if wrong_shape:
        details = ", ".join(
            f"{key} {tuple(state[key].shape)} (expected {tuple(expected[key].shape)})" for key in sorted(wrong_shape)[:4]
        )
        more = f" and {len(wrong_shape) - 4} more" if len(wrong_shape) > 4 else ""
        raise CheckpointError(f"{source}: tensor shapes do not fit the architecture: {details}{more}")


def _assign(
    model: CLIPSeg, state: Mapping[str, torch.Tensor], source: str, *, may_be_missing: tuple[str, ...] = ()
) -> CLIPSeg:
    """Check `state` against the model, then load it: on a meta-device model the tensors themselves are taken,
    otherwise (some keys may be missing) they are copied in."""
    _check_fits(model, state, source, may_be_missing=may_be_missing)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    not_finite = [key for key, tensor in tensors.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if not_finite:
        raise CheckpointError(f"{source}: NaN or infinite weights in {_preview(not_finite)}")
    on_meta = not may_be_missing
    model.load_state_dict(tensors, strict=on_meta, assign=on_meta)
    return model


def _preview(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
