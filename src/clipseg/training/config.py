"""Training configuration: small dataclasses read from YAML, every value overridable as ``section.key=value``.

A config file has the sections ``model``, ``data``, ``optim`` and ``run`` plus a ``name``; keys left out take the
defaults below, which are the paper's PhraseCut+ setting (rd64, batch 64, AdamW 1e-3 cosine to 1e-4 over 20,000
iterations, BCE, mixed precision on GPU). Unknown keys and values of the wrong type are errors naming the key.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..checkpoints.pretrained import DEFAULT_CLIP
from ..typed_config import apply_overrides, build, flatten, plain, read_yaml

RANDOM_CLIP = "random"

# Training's autocast setting (inference number formats: `clipseg.number_formats.Precision`).
AutocastPrecision = Literal["auto", "fp32", "fp16", "bf16"]
SourceFormat = Literal["phrasecut", "coco", "folder"]
SampleOrder = Literal["original", "shuffle", "sequential"]
ModelKind = Literal["clipseg", "clip-deconv", "vitseg"]
SAMPLE_ORDERS: tuple[str, ...] = ("original", "shuffle", "sequential")


@dataclass
class ModelSettings:
    """Which model is trained.

    Attributes:
        kind: "clipseg", or one of the paper's baselines (`clipseg.model.baselines`): "clip-deconv" (CLIP block 9,
            FiLM, an MLP and one transposed convolution; D = `reduce_dim` 64, D2 = `reduce2_dim`) or "vitseg"
            (CLIPSeg's decoder on an ImageNet ViT, `backbone`, with `clip`'s text tower).
        preset: architecture from `clipseg.model.config.PRESETS` ("rd64", "rd64-refined", "rd16", "rd128").
        architecture: overrides of `CLIPSegConfig` fields on top of the preset, nested like its `to_dict()`,
            e.g. ``{"decoder": {"extract_layers": [3, 7, 9]}}``. Vision/text fields only with ``clip: random``
            (pre-trained CLIP weights fix their own architecture).
        clip: CLIP weights the decoder is trained on: a hub id or local file/directory in any layout
            `clipseg.load_model` reads for CLIP, or "random" for an untrained CLIP (Table 9 "no CLIP
            pre-training"). Ignored when `init` is set.
        init: start from a full CLIPSeg checkpoint (any `clipseg.load_model` source) and fine-tune its decoder;
            the architecture then comes from that checkpoint.
        dropout: dropout of the decoder's transformer blocks while training (torch's default 0.1, as released).
        reduce2_dim: CLIP-Deconv's hidden width D2 (64 in the released experiments).
        backbone: ViTSeg's timm ViT checkpoint (``vit_base_patch16_384`` weights, safetensors or a state dict).
    """

    kind: ModelKind = "clipseg"
    preset: str = "rd64"
    architecture: dict[str, Any] = field(default_factory=dict)
    clip: str = DEFAULT_CLIP
    init: str | None = None
    dropout: float = 0.1
    reduce2_dim: int = 64
    backbone: str | None = None


@dataclass
class DataSettings:
    """Where samples come from and how PhraseCut+ (`clipseg.data.phrasecut_plus.PhraseCutPlus`) draws them.

    Attributes:
        format: on-disk layout of the data: "phrasecut" (VGPhraseCut_v0), "coco" (COCO-format instances JSON,
            category names as prompts) or "folder" (own data: images + one mask per prompt, see
            `clipseg.data.folder`).
        root: the training data: the PhraseCut directory, the COCO instances JSON file (images in ``images/``
            next to it unless `image_dir` is set), or the own-data folder / CSV file.
        split: PhraseCut split to train on (phrasecut only).
        val: validation data, or None for no validation: a PhraseCut split name ("val"), or for coco/folder the
            path of another instances JSON / folder / CSV file.
        image_dir: COCO image directory (coco only; default ``images/`` next to the JSON file).
        image_size: side of the square training images.
        prompt_templates: template set applied to phrases ("plain", "fixed", "shuffle", "shuffle+").
        negative_prob: probability of a negative sample (another phrase, empty target).
        with_visual: use visual supports and mix their CLIP embedding with the text's.
        mix_text_min, mix_text_max: range of the text weight w of samples with a support.
        visual_variant: visual prompt engineering of supports (`clipseg.visual_prompt.VARIANTS`).
        remove_classes: WordNet preset of `clipseg.data.wordnet` whose phrases are removed (zero/one-shot
            experiments), or None.
        exclude_categories: COCO categories held out of training and validation (coco only): category names, or
            ``coco-20i-<fold>`` for the fold's twenty classes (COCO-20i one-shot training, paper Table 6). Their
            objects stay in the images as background, as in HSNet's training lists.
        crop: object-aware random square crops (else the whole image is resized).
        only_visual: visual prompts only, w = 0 (the released ViTSeg PC+ run): samples of phrases with more than
            one sample, conditioned on the support alone.
        order: sample order: "original" (the released training: images shuffled once with the run's seed, an
            image's samples kept together, the same order every epoch), "shuffle" (a new permutation every epoch)
            or "sequential" (the dataset's order).
        num_workers: DataLoader worker processes.
        max_bad_samples: training samples that cannot be read (a corrupt or missing image, a mask of the wrong
            size) are skipped with a warning naming the file and replaced by the next readable one; past this
            many skips the run stops.
    """

    format: SourceFormat = "phrasecut"
    root: str | None = None
    split: str = "train"
    val: str | None = None
    image_dir: str | None = None
    image_size: int = 352
    prompt_templates: str = "shuffle+"
    negative_prob: float = 0.2
    with_visual: bool = True
    mix_text_min: float = 0.0
    mix_text_max: float = 0.5
    visual_variant: str = "crop_blur_highlight"
    remove_classes: str | None = None
    exclude_categories: tuple[str, ...] = ()
    crop: bool = True
    only_visual: bool = False
    order: SampleOrder = "original"
    num_workers: int = 0
    max_bad_samples: int = 100


@dataclass
class OptimSettings:
    """Optimisation: AdamW with a per-step cosine schedule from `lr` down to `lr_min` over `max_iterations`.

    Attributes:
        batch_size: global batch size (split evenly over the processes of a distributed run).
        precision: "auto" (fp16 mixed precision on CUDA as in the paper, fp32 elsewhere), "fp32", "fp16"
            (CUDA/MPS only, with loss scaling) or "bf16" (mixed precision, also on CPU).
        grad_clip_norm: clip the decoder's gradient norm to this value, or None.
    """

    batch_size: int = 64
    max_iterations: int = 20000
    lr: float = 1e-3
    lr_min: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    precision: AutocastPrecision = "auto"
    grad_clip_norm: float | None = None


@dataclass
class RunSettings:
    """Bookkeeping that does not change the trained weights.

    Attributes:
        output_dir: run directory (default ``runs/<name>``): config, metrics, checkpoints and the final model.
        seed: seed of model initialisation, data order and augmentation.
        device: "cpu", "cuda", "cuda:1", "mps", ... or None for the best available (a distributed run on
            CUDA uses the process's LOCAL_RANK device).
        log_every: steps between logged training metrics.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        keep_checkpoints: how many of the newest checkpoints to keep (0 keeps all).
        val_every: steps between validations (None: only at the end, when `data.val` is set).
        val_batch_size: batch size per process during validation.
        val_max_batches: limit validation to this many batches per process, or None for the whole split.
        progress: show a progress bar (None: when stderr is a terminal).
        tensorboard: also write TensorBoard event files (needs the `tensorboard` package).
    """

    output_dir: str | None = None
    seed: int = 0
    device: str | None = None
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    val_every: int | None = None
    val_batch_size: int = 16
    val_max_batches: int | None = None
    progress: bool | None = None
    tensorboard: bool = False


# Settings a resumed run may change: they do not affect which weights come out.
RESUMABLE_OVERRIDES = frozenset(
    {
        "run.output_dir", "run.device", "run.log_every", "run.checkpoint_every", "run.keep_checkpoints",
        "run.val_every", "run.val_batch_size", "run.val_max_batches", "run.progress", "run.tensorboard",
        "data.num_workers", "data.max_bad_samples",
    }
)


@dataclass
class TrainConfig:
    """A whole training run. Build with `load_config` (YAML + overrides) or `TrainConfig.from_dict`."""

    name: str = "clipseg"
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        _check(self.name.strip() != "", "name", "must not be empty")
        _check(0.0 <= self.model.dropout < 1.0, "model.dropout", "must lie in [0, 1)")
        _check(self.model.reduce2_dim > 0, "model.reduce2_dim", "must be positive")
        _check(
            self.model.backbone is None or self.model.kind == "vitseg",
            "model.backbone",
            "is ViTSeg's timm ViT checkpoint: only with model.kind: vitseg",
        )
        _check(
            self.model.init is None or self.model.kind == "clipseg",
            "model.kind",
            "comes from the checkpoint when model.init is set (leave it at clipseg)",
        )
        _check(self.data.image_size > 0, "data.image_size", "must be positive")
        _check(0.0 <= self.data.negative_prob <= 1.0, "data.negative_prob", "must lie in [0, 1]")
        _check(
            0.0 <= self.data.mix_text_min <= self.data.mix_text_max <= 1.0,
            "data.mix_text_min/max",
            "need 0 <= mix_text_min <= mix_text_max <= 1",
        )
        _check(self.data.num_workers >= 0, "data.num_workers", "must be non-negative")
        _check(not self.data.only_visual or self.data.with_visual, "data.only_visual", "needs data.with_visual")
        _check(
            not self.data.exclude_categories or self.data.format == "coco",
            "data.exclude_categories",
            "holds COCO categories out: only with data.format: coco",
        )
        _check(self.optim.batch_size > 0, "optim.batch_size", "must be positive")
        _check(self.optim.max_iterations > 0, "optim.max_iterations", "must be positive")
        _check(self.data.max_bad_samples >= 0, "data.max_bad_samples", "must be non-negative")
        _check(math.isfinite(self.optim.lr) and self.optim.lr > 0, "optim.lr", f"must be positive, got {self.optim.lr}")
        _check(
            math.isfinite(self.optim.lr_min) and 0.0 <= self.optim.lr_min <= self.optim.lr,
            "optim.lr_min",
            f"need 0 <= lr_min <= lr ({self.optim.lr}), got {self.optim.lr_min}",
        )
        _check(self.optim.weight_decay >= 0, "optim.weight_decay", "must be non-negative")
        _check(
            self.optim.grad_clip_norm is None or self.optim.grad_clip_norm > 0,
            "optim.grad_clip_norm",
            "must be positive or null",
        )
        _check(self.run.seed >= 0, "run.seed", "must be non-negative")
        _check(self.run.log_every > 0, "run.log_every", "must be positive")
        _check(self.run.checkpoint_every > 0, "run.checkpoint_every", "must be positive")
        _check(self.run.keep_checkpoints >= 0, "run.keep_checkpoints", "must be non-negative")
        _check(self.run.val_every is None or self.run.val_every > 0, "run.val_every", "must be positive or null")
        _check(self.run.val_batch_size > 0, "run.val_batch_size", "must be positive")
        _check(
            self.run.val_max_batches is None or self.run.val_max_batches > 0,
            "run.val_max_batches",
            "must be positive or null",
        )

    @property
    def output_dir(self) -> Path:
        """The run directory: `run.output_dir`, or ``runs/<name>``."""
        return Path(self.run.output_dir if self.run.output_dir is not None else Path("runs") / self.name)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable; tuples become lists)."""
        return plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a nested dict, coercing values to the declared types; unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a training config must be a mapping of sections, got {type(data).__name__}")
        return build(cls, data)

    def with_overrides(self, overrides: Iterable[str]) -> TrainConfig:
        """A copy with ``"section.key=value"`` overrides applied (values parsed as YAML, then type-checked)."""
        data = self.to_dict()
        apply_overrides(data, overrides)
        return TrainConfig.from_dict(data)


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> TrainConfig:
    """Read a YAML training config (``base:`` chains resolved) and apply ``section.key=value`` overrides."""
    data = read_yaml(path, what="training config")
    try:
        return TrainConfig.from_dict(data).with_overrides(overrides)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def changed_keys(old: TrainConfig, new: TrainConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    flat_old, flat_new = flatten(old.to_dict()), flatten(new.to_dict())
    return sorted(key for key in flat_old.keys() | flat_new.keys() if flat_old.get(key) != flat_new.get(key))


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{key}: {message}")
