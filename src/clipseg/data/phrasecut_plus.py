"""PhraseCut+ (paper Sec. 3.1): referring-segmentation samples with visual supports, negatives and crops.

`PhraseCutPlus` wraps any *referring source* — PhraseCut (`clipseg.data.phrasecut.PhraseCut`), a COCO-format
dataset (`clipseg.data.coco.CocoReferringSource`) or an own-data folder (`clipseg.data.folder.FolderSource`) — and
produces the training sample contract::

    {"image": (3, S, S) normalised, "target": (1, S, S) in {0, 1}, "text": prompt with template applied,
     "support": (3, S, S) visual prompt (zeros if none), "text_weight": w of c = w * text + (1 - w) * visual}

Per sample, as in the released training code (experiments/phrasecut.yaml):

- a square crop whose side is the image's shorter side, placed at random until the target covers more than 5 %
  of the full image's area (50 tries, else the try with the most target pixels); image resized bilinearly
  (``align_corners=True``), mask with nearest neighbour;
- with probability 0.2 a negative: the phrase is swapped for another phrase of the dataset and the target is empty;
- a template drawn from the prompt set (``shuffle+`` by default) applied to the (possibly swapped) phrase;
- a visual support: a sample drawn uniformly among all samples of the (possibly swapped) phrase -- the query itself
  included -- when that phrase has more than one sample; cropped the same way, resized, and prepared with the
  visual prompt engineering (crop + blur + background 10 %); a crop that misses the object still gives a support
  (the whole crop blurred and darkened), as in the released code; none when the phrase is unique;
- a text weight w ~ U(0, 0.5) when there is a support, else w = 1.

Everything random is drawn from a generator seeded by (seed, epoch, index), so a sample is reproducible on any
worker and training resumes exactly; call `set_epoch` before each epoch's DataLoader iterator is created.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from clipseg.data.resizing import normalise, resize_image_aligned, resize_nearest
from clipseg.model.config import IMAGENET_MEAN, IMAGENET_STD
from clipseg.templates import TemplateSet, resolve_templates
from clipseg.visual_prompt import DEFAULT_VARIANT, VARIANTS, prepare_support

CropBox = tuple[int, int, int, int]


class ReferringSource(Protocol):
    """A dataset of (image, target mask, phrase) samples; PhraseCut, COCO and folder readers implement it."""

    @property
    def phrases(self) -> Sequence[str]:
        """The phrase of every sample, in sample order."""

    def __len__(self) -> int: ...

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample `index`."""

    def load_mask(self, index: int) -> np.ndarray:
        """The (H, W) bool target mask of sample `index`."""

    # Optional: ``image_keys``, the image of every sample (samples of one image share a key), used by the
    # released sample order (`clipseg.training.data.GlobalBatchSampler`); without it every sample is its own image.


@dataclass(frozen=True)
class SamplePlan:
    """Every random decision behind one sample, drawn before any image is decoded.

    `crop` and `support_crop` are ``(x0, y0, x1, y1)`` boxes (exclusive ends) in source-image pixels.
    """

    source_index: int
    phrase: str
    text: str
    negative: bool
    crop: CropBox
    support_index: int | None
    support_crop: CropBox | None
    text_weight: float


def find_object_crop(
    mask: np.ndarray, rng: np.random.Generator, min_fraction: float = 0.05, tries: int = 50
) -> CropBox:
    """A random square crop (side = the mask's shorter side) keeping enough of the target visible.

    Tries up to `tries` random placements and returns the first whose target pixels exceed `min_fraction` of the
    whole image's area (the released code's criterion; it implies the same fraction of the crop), else the try
    with the most target pixels.
    """
    height, width = mask.shape
    side = min(height, width)
    threshold = min_fraction * height * width
    # A summed-area table makes every try O(1).
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best_box, best_count = None, -1
    for _ in range(tries):
        y0 = int(rng.integers(0, height - side + 1))
        x0 = int(rng.integers(0, width - side + 1))
        y1, x1 = y0 + side, x0 + side
        count = int(integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0])
        if count > threshold:
            return x0, y0, x1, y1
        if count > best_count:
            best_box, best_count = (x0, y0, x1, y1), count
    return best_box


def _to_normalised_tensor(image: Image.Image, box: CropBox, size: int) -> torch.Tensor:
    return normalise(resize_image_aligned(image.convert("RGB").crop(box), (size, size)), IMAGENET_MEAN, IMAGENET_STD)


def _crop_mask(mask: np.ndarray, box: CropBox, size: int) -> torch.Tensor:
    x0, y0, x1, y1 = box
    return resize_nearest(mask[y0:y1, x0:x1].astype(np.float32), (size, size))


class PhraseCutPlus(torch.utils.data.Dataset):
    """PhraseCut+ training samples drawn from a referring source (see the module docstring).

    Args:
        source: the samples (PhraseCut split, COCO source, folder source).
        image_size: side S of the square outputs.
        negative_prob: probability of swapping the phrase for another one and emptying the target.
        with_visual: draw visual supports; if False every sample is text only (w = 1).
        mix_text_min, mix_text_max: range of the uniform text weight of samples with a support.
        prompt_templates: template set applied to phrases, or an explicit tuple of ``"{}"`` templates.
        visual_variant: visual prompt engineering variant for supports (an image-space variant).
        exclude_phrase: predicate removing samples by phrase (e.g. `clipseg.data.wordnet.PhraseFilter`); removed
            phrases are also never used as negatives or supports.
        crop: use object-aware square crops; if False the whole image is resized (distorting the aspect ratio).
        only_visual: visual prompts only (the released ViTSeg PC+ run, ``only_visual: True`` with ``mix: False``):
            only samples whose phrase has more than one sample, conditioned on the support alone (w = 0); a negative
            whose new phrase is unique gets the all-zero support, as released.
        seed: base seed of every random decision.
    """

    def __init__(
        self,
        source: ReferringSource,
        *,
        image_size: int = 352,
        negative_prob: float = 0.2,
        with_visual: bool = True,
        mix_text_min: float = 0.0,
        mix_text_max: float = 0.5,
        prompt_templates: TemplateSet | Sequence[str] = "shuffle+",
        visual_variant: str = DEFAULT_VARIANT,
        exclude_phrase: Callable[[str], bool] | None = None,
        crop: bool = True,
        only_visual: bool = False,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= negative_prob <= 1.0:
            raise ValueError(f"negative_prob must lie in [0, 1], got {negative_prob}")
        if not 0.0 <= mix_text_min <= mix_text_max <= 1.0:
            raise ValueError(f"need 0 <= mix_text_min <= mix_text_max <= 1, got {mix_text_min}, {mix_text_max}")
        prompt_templates = resolve_templates(prompt_templates)
        if visual_variant not in VARIANTS or VARIANTS[visual_variant].token_mask_mode is not None:
            image_space = sorted(name for name, spec in VARIANTS.items() if spec.token_mask_mode is None)
            raise ValueError(
                f"visual_variant must be an image-space variant, one of {image_space}; got {visual_variant!r}"
            )
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if only_visual and not with_visual:
            raise ValueError("only_visual needs with_visual")
        self.source = source
        self.image_size = image_size
        self.negative_prob = negative_prob
        self.with_visual = with_visual
        self.mix_text_min = mix_text_min
        self.mix_text_max = mix_text_max
        self.templates = tuple(prompt_templates)
        self.visual_variant = visual_variant
        self.crop = crop
        self.seed = seed
        self.epoch = 0

        phrases = list(source.phrases)
        self.source_indices = [
            i for i, phrase in enumerate(phrases) if exclude_phrase is None or not exclude_phrase(phrase)
        ]
        if not self.source_indices:
            raise ValueError("no samples left: the source is empty or every phrase was excluded")
        self.phrases = [phrases[i] for i in self.source_indices]
        samples_by_phrase: dict[str, list[int]] = defaultdict(list)
        for i in self.source_indices:
            samples_by_phrase[phrases[i]].append(i)
        self.samples_by_phrase = dict(samples_by_phrase)
        self.unique_phrases = sorted(self.samples_by_phrase)
        self.phrase_slot = {phrase: slot for slot, phrase in enumerate(self.unique_phrases)}
        self.only_visual = only_visual
        if only_visual:  # as released: filtered after the phrase index, so negatives still draw from every phrase
            self.source_indices = [i for i in self.source_indices if len(self.samples_by_phrase[phrases[i]]) > 1]
            if not self.source_indices:
                raise ValueError("only_visual: no phrase has more than one sample")
            self.phrases = [phrases[i] for i in self.source_indices]

    def __len__(self) -> int:
        return len(self.source_indices)

    @property
    def image_keys(self) -> list | None:
        """The source's image key of every kept sample, or None when the source has none."""
        keys = getattr(self.source, "image_keys", None)
        return None if keys is None else [keys[i] for i in self.source_indices]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws `__getitem__` reproduces."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def _crop_box(self, mask: np.ndarray, rng: np.random.Generator) -> CropBox:
        if self.crop:
            return find_object_crop(mask, rng)
        return 0, 0, mask.shape[1], mask.shape[0]

    def plan(self, index: int) -> SamplePlan:
        """Draw every random decision of sample `index` for the current seed and epoch (no image decoding)."""
        return self._draw(index)[0]

    def _draw(self, index: int) -> tuple[SamplePlan, np.ndarray, np.ndarray | None]:
        """The plan of sample `index` plus the query and support masks it was drawn from."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        source_index = self.source_indices[index]
        phrase = self.phrases[index]
        mask = self.source.load_mask(source_index)
        crop = self._crop_box(mask, rng)

        negative = len(self.unique_phrases) > 1 and bool(rng.random() < self.negative_prob)
        if negative:
            # Uniform over the other phrases: draw among n-1 slots and skip the current phrase's slot.
            slot = int(rng.integers(len(self.unique_phrases) - 1))
            slot += slot >= self.phrase_slot[phrase]
            phrase = self.unique_phrases[slot]
        text = self.templates[int(rng.integers(len(self.templates)))].format(phrase)

        support_index, support_crop, support_mask = None, None, None
        same_phrase = self.samples_by_phrase[phrase] if self.with_visual else []
        if len(same_phrase) > 1:
            # As released: uniform over every sample of the (possibly swapped) phrase, the query itself included.
            support_index = same_phrase[int(rng.integers(len(same_phrase)))]
            support_mask = self.source.load_mask(support_index)
            support_crop = self._crop_box(support_mask, rng)
        if self.only_visual:
            text_weight = 0.0
        elif support_index is not None:
            text_weight = float(rng.uniform(self.mix_text_min, self.mix_text_max))
        else:
            text_weight = 1.0
        plan = SamplePlan(source_index, phrase, text, negative, crop, support_index, support_crop, text_weight)
        return plan, mask, support_mask

    def _support(self, plan: SamplePlan, mask: np.ndarray) -> torch.Tensor:
        size = self.image_size
        image = self.source.load_image(plan.support_index)
        pixels = _to_normalised_tensor(image, plan.support_crop, size)
        target = _crop_mask(mask, plan.support_crop, size)
        # A crop that misses the object, or an object lost in the resize, still gives a support, as released: the
        # whole crop becomes background (blurred and darkened).
        return prepare_support(pixels, target, self.visual_variant, size, allow_empty=True).pixel_values

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str | float]:
        plan, mask, support_mask = self._draw(index)
        size = self.image_size
        image = _to_normalised_tensor(self.source.load_image(plan.source_index), plan.crop, size)
        target = torch.zeros(1, size, size) if plan.negative else _crop_mask(mask, plan.crop, size)[None]
        support = torch.zeros(3, size, size) if support_mask is None else self._support(plan, support_mask)
        return {
            "image": image,
            "target": target,
            "text": plan.text,
            "support": support,
            "text_weight": plan.text_weight,
        }
