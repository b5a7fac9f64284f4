"""A prediction: the decoder's logits for one image and its prompts, and everything derived from them at the
photo's size — probabilities (negatives applied), masks under one or per-prompt thresholds, unions, label maps,
edge-aware refinement. See `clipseg.predictor` for the semantics of combined prompts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .image import ImageInput, load_image
from .postprocess import DEFAULT_THRESHOLD
from .thresholds import ThresholdLike, binary_mask, per_prompt


@dataclass
class Prediction:
    """The decoder's answer for one image and P prompts.

    Attributes:
        names: one label per prompt (the text, or the image prompt's name).
        logits: (P, h, w) float32 logits at the model's input size (352x352 for the released models), or at the
            tiles' working resolution for a tiled prediction, on the CPU.
        negative_logits: (N, h, w) logits of the negative prompts (N may be 0).
        image_size: (H, W) of the original image (after EXIF orientation).

    Probabilities are computed at the original size on first use: logits upsampled bilinearly, then sigmoid,
    then the negative prompts applied (see the module docstring), then, for a `refined` prediction, each map
    refined with the photo as guide.
    """

    names: tuple[str, ...]
    logits: torch.Tensor
    negative_logits: torch.Tensor
    image_size: tuple[int, int]
    _negative_factor: torch.Tensor | None = field(default=None, init=False, repr=False)
    _refiner: Callable[[int, torch.Tensor], torch.Tensor] | None = field(default=None, init=False, repr=False)
    _refined: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    def probability(self, index: int) -> torch.Tensor:
        """(H, W) float32 probability map of prompt `index`, negatives applied."""
        if "probabilities" in self.__dict__:
            return self.probabilities[index]
        if self._refiner is not None:
            if index not in self._refined:
                plain = self._with_negatives(self._full_size_probabilities(self.logits[index : index + 1]))[0]
                self._refined[index] = self._refiner(index, plain)
            return self._refined[index]
        return self._with_negatives(self._full_size_probabilities(self.logits[index : index + 1]))[0]

    @cached_property
    def probabilities(self) -> torch.Tensor:
        """(P, H, W) float32 probabilities in [0, 1] at the original image size, negatives applied."""
        if self._refiner is not None:
            return torch.stack([self.probability(index) for index in range(len(self.names))])
        return self._with_negatives(self._full_size_probabilities(self.logits))

    def refined(
        self,
        image: ImageInput,
        method: str = "guided",
        threshold: ThresholdLike = DEFAULT_THRESHOLD,
        **options: Any,
    ) -> Prediction:
        """This prediction with every probability map refined by `clipseg.refine.refine` (negatives applied
        first), `image` being the photo it was made from; masks, unions and label maps follow the refined maps.

        `threshold` is the one the refined masks will be cut at (a number, a `Thresholds` or a mapping, as in
        `masks`): each map's contrast step pivots on its prompt's threshold (refine's ``center``), so refinement
        moves edges without turning a pixel above the threshold into background. An explicit ``center`` option
        overrides it. Maps are refined on first use. Raises ValueError for an unknown method or option, or a photo
        of another size."""
        from .refine import check_refine_options

        check_refine_options(method, options)
        pixels = np.asarray(load_image(image))
        if pixels.shape[:2] != tuple(self.image_size):
            raise ValueError(
                f"image is {pixels.shape[1]}x{pixels.shape[0]} but the prediction is for a "
                f"{self.image_size[1]}x{self.image_size[0]} image"
            )
        centers = (options["center"],) * len(self.names) if "center" in options else per_prompt(threshold, self.names)
        result = replace(self)  # the same kind (e.g. a video frame's), without cached maps or refiner
        result._refiner = _Refiner(pixels, method, {k: v for k, v in options.items() if k != "center"}, tuple(centers))
        return result

    def masks(self, threshold: ThresholdLike = DEFAULT_THRESHOLD) -> torch.Tensor:
        """(P, H, W) bool: probability > threshold (`clipseg.thresholds.binary_mask`). `threshold` is one number
        for every prompt, a `Thresholds` (calibrated per prompt, with an overall fallback) or a mapping prompt
        name -> threshold."""
        values = torch.tensor(per_prompt(threshold, self.names), dtype=torch.float32)
        return binary_mask(self.probabilities, values[:, None, None])

    def mask(self, index: int, threshold: ThresholdLike = DEFAULT_THRESHOLD) -> torch.Tensor:
        """(H, W) bool mask of prompt `index` (threshold as in `masks`)."""
        (value,) = per_prompt(threshold, self.names[index : index + 1])
        return binary_mask(self.probability(index), value)

    def union_probability(self) -> torch.Tensor:
        """(H, W) max over prompts: the soft union."""
        union = self.probability(0)
        for index in range(1, len(self.names)):
            union = torch.maximum(union, self.probability(index))
        return union

    def union(self, threshold: ThresholdLike = DEFAULT_THRESHOLD) -> torch.Tensor:
        """(H, W) bool: pixels in any prompt's mask (threshold as in `masks`)."""
        if isinstance(threshold, (int, float)):
            return binary_mask(self.union_probability(), per_prompt(threshold, ["union"])[0])
        union = self.mask(0, threshold)
        for index in range(1, len(self.names)):
            union |= self.mask(index, threshold)
        return union

    def label_map(self, background_threshold: ThresholdLike = DEFAULT_THRESHOLD) -> torch.Tensor:
        """(H, W) int64 labels: 1 + index of the most probable prompt, 0 where that prompt does not reach its
        threshold (`background_threshold`: one number, or per prompt as in `masks`)."""
        limits = torch.tensor(per_prompt(background_threshold, self.names), dtype=torch.float32)
        best = torch.full(self.image_size, -1.0)
        labels = torch.zeros(self.image_size, dtype=torch.long)
        for index in range(len(self.names)):
            probability = self.probability(index)
            better = probability > best
            best = torch.where(better, probability, best)
            labels[better] = index + 1
        labels[~binary_mask(best, limits[labels - 1])] = 0
        return labels

    def _full_size_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, h, w) logits -> (N, H, W) probabilities, in one new tensor (8 full-HD maps are 64 MB)."""
        return upsample_logits(logits, self.image_size).sigmoid_()

    def _with_negatives(self, probabilities: torch.Tensor) -> torch.Tensor:
        """`probabilities` (a tensor of our own) times ∏(1 - p(negative)), in place."""
        if not len(self.negative_logits):
            return probabilities
        if self._negative_factor is None:
            self._negative_factor = (1.0 - self._full_size_probabilities(self.negative_logits)).prod(dim=0)
        return probabilities.mul_(self._negative_factor)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) logits -> (N, H, W) float32, bilinear (antialiased along a shrinking axis).

    Bilinear resizing is separable, so it runs as two one-axis passes, the shrinking (or least growing) axis
    first: the intermediate then never exceeds the output. A single 2-D call would resize the width first, which
    for a 20,000,000 x 1 image is a 352 x 20,000,000 intermediate (28 GB)."""
    height, width = size
    maps = logits[:, None].float()
    if maps.shape[-2:] == (height, width):
        return maps[:, 0].clone()  # always a new tensor: callers apply the sigmoid in place
    h, w = maps.shape[-2:]
    # Elements of the intermediate: height-first is (height, w), width-first is (h, width).
    steps = [(height, w), (height, width)] if height * w <= h * width else [(h, width), (height, width)]
    for step_height, step_width in steps:
        if (step_height, step_width) != tuple(maps.shape[-2:]):
            shrinking = step_height < maps.shape[-2] or step_width < maps.shape[-1]
            maps = F.interpolate(
                maps, size=(step_height, step_width), mode="bilinear", align_corners=False, antialias=shrinking
            )
    return maps[:, 0]


@dataclass(frozen=True)
class _Refiner:
    """Refines prompt `index`'s map around its own threshold (a class, not a closure, so predictions pickle)."""

    pixels: np.ndarray
    method: str
    options: dict[str, Any]
    centers: tuple[float, ...]

    def __call__(self, index: int, probability: torch.Tensor) -> torch.Tensor:
        from .refine import refine

        return refine(probability, self.pixels, self.method, center=self.centers[index], **self.options)
