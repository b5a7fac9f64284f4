"""Segment images from text prompts, image prompts or both: the CLIP backbone runs once per image.

    predictor = Predictor(clipseg.load_model("CIDAS/clipseg-rd64-refined"))
    predictor.set_image("kitchen.jpg")                      # backbone once
    prediction = predictor.predict(["a cup", "a chair"])    # decoder only, batched over prompts
    prediction.probabilities                                # (2, H, W) in [0, 1] at the photo's size
    prediction.masks(0.4)                                   # (2, H, W) bool

Semantics of combined prompts (all at the original image size):
- negative prompts: the probability of prompt i becomes ``p_i * prod_j (1 - n_j)``, the chance that the pixel
  shows the prompt and none of the negatives if they were independent; a confident negative removes a region.
- union: ``max_i p_i``; thresholding it gives exactly the union of the per-prompt masks.
- label map: per pixel the prompt of highest probability (labels 1..P), or 0 (background) where no prompt
  reaches the background threshold — the paper's zero-shot semantic segmentation.
"""

from __future__ import annotations

import random
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .image import ImageInput, load_image, preprocess, resize_mask
from .messages import shorten
from .model.interface import SegmentationModel
from .postprocess import DEFAULT_THRESHOLD
from .prompts import ImagePrompt, MixedPrompt, Prompt
from .templates import TemplateSet, resolve_templates
from .thresholds import ThresholdLike, per_prompt
from .tiling import Tile, TileOptions, TilesInput, fuse, plan_tiles
from .visual_prompt import VisualPromptSpec, prepare_support

# Prompt-image pairs per decoder call: bounds memory (the refined head keeps a 32-channel map at full size).
DECODE_CHUNK = 8
# Images per backbone call: larger batches were measured slower per image on CPU (activations leave the cache).
BACKBONE_CHUNK = 4
TEXT_CHUNK = 64

Templates = TemplateSet | Sequence[str]


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
    _refiner: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, init=False, repr=False)
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
                self._refined[index] = self._refiner(plain)
            return self._refined[index]
        return self._with_negatives(self._full_size_probabilities(self.logits[index : index + 1]))[0]

    @cached_property
    def probabilities(self) -> torch.Tensor:
        """(P, H, W) float32 probabilities in [0, 1] at the original image size, negatives applied."""
        if self._refiner is not None:
            return torch.stack([self.probability(index) for index in range(len(self.names))])
        return self._with_negatives(self._full_size_probabilities(self.logits))

    def refined(self, image: ImageInput, method: str = "guided", **options: Any) -> Prediction:
        """This prediction with every probability map refined by `clipseg.refine.refine` (negatives applied
        first), `image` being the photo it was made from; masks, unions and label maps follow the refined maps.
        Maps are refined on first use. Raises ValueError for an unknown method or option, or a photo of another
        size."""
        from .refine import check_refine_options, refine

        check_refine_options(method, options)
        pixels = np.asarray(load_image(image))
        if pixels.shape[:2] != tuple(self.image_size):
            raise ValueError(
                f"image is {pixels.shape[1]}x{pixels.shape[0]} but the prediction is for a "
                f"{self.image_size[1]}x{self.image_size[0]} image"
            )
        result = Prediction(self.names, self.logits, self.negative_logits, self.image_size)
        result._refiner = lambda probability: refine(probability, pixels, method, **options)
        return result

    def masks(self, threshold: ThresholdLike = DEFAULT_THRESHOLD) -> torch.Tensor:
        """(P, H, W) bool: probability >= threshold. `threshold` is one number for every prompt, a `Thresholds`
        (calibrated per prompt, with an overall fallback) or a mapping prompt name -> threshold."""
        values = torch.tensor(per_prompt(threshold, self.names), dtype=torch.float32)
        return self.probabilities >= values[:, None, None]

    def mask(self, index: int, threshold: ThresholdLike = DEFAULT_THRESHOLD) -> torch.Tensor:
        """(H, W) bool mask of prompt `index` (threshold as in `masks`)."""
        (value,) = per_prompt(threshold, self.names[index : index + 1])
        return self.probability(index) >= torch.tensor(value, dtype=torch.float32)

    def union_probability(self) -> torch.Tensor:
        """(H, W) max over prompts: the soft union."""
        union = self.probability(0)
        for index in range(1, len(self.names)):
            union = torch.maximum(union, self.probability(index))
        return union

    def union(self, threshold: ThresholdLike = DEFAULT_THRESHOLD) -> torch.Tensor:
        """(H, W) bool: pixels in any prompt's mask (threshold as in `masks`)."""
        if isinstance(threshold, (int, float)):
            return self.union_probability() >= torch.tensor(per_prompt(threshold, ["union"])[0], dtype=torch.float32)
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
        labels[best < limits[labels - 1]] = 0
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


class Predictor:
    """Runs a CLIPSeg model on images: backbone once per image, decoder batched over prompts.

    Args:
        model: any `SegmentationModel`: a `clipseg.CLIPSeg` (e.g. from `clipseg.load_model`) or an
            `clipseg.export.runtime.OnnxModel`.
        device: move a PyTorch model there; default: leave it where it is.
        image_size: side of the square model input; default `model.config.image_size` (352).
        cache_size: conditional vectors (per text/template or image prompt) kept across images (LRU).
    """

    def __init__(
        self,
        model: SegmentationModel,
        *,
        device: str | torch.device | None = None,
        image_size: int | None = None,
        cache_size: int = 1024,
    ) -> None:
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.image_size = image_size or model.config.image_size
        if self.image_size < model.config.vision.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is smaller than one {model.config.vision.patch_size}px patch"
            )
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._features: list[torch.Tensor] | None = None
        self._original_size: tuple[int, int] | None = None
        self._image: Image.Image | None = None
        self._tile_features: tuple[list[Tile], list[torch.Tensor]] | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def original_size(self) -> tuple[int, int] | None:
        """(H, W) of the image given to `set_image` (after EXIF orientation), or None."""
        return self._original_size

    def set_image(self, image: ImageInput) -> None:
        """Load `image` (path, PIL image or array), preprocess it and run the CLIP backbone once, keeping the
        activations the decoder reads for every later `predict`."""
        rgb = load_image(image)
        with torch.inference_mode():
            pixels = self._preprocess(rgb)[None]
            self._features = self.model.extract_features(pixels)
        self._original_size = (rgb.height, rgb.width)
        self._image = rgb
        self._tile_features = None

    def reset_image(self) -> None:
        """Forget the stored image and its activations."""
        self._features = None
        self._original_size = None
        self._image = None
        self._tile_features = None

    def predict(
        self,
        prompts: Prompt | Sequence[Prompt],
        *,
        negative: Prompt | Sequence[Prompt] | None = None,
        templates: Templates = "plain",
        ensemble: bool = False,
        seed: int = 0,
        tiles: TilesInput = None,
    ) -> Prediction:
        """Segment the stored image for each prompt; runs the decoder only (and, with `tiles`, the backbone over
        the tiles once per image).

        Args:
            prompts: one prompt or a list: text, `ImagePrompt`, or `MixedPrompt`.
            negative: prompts whose regions are removed from every mask (see the module docstring).
            templates: text templates: "plain", "fixed", "shuffle", "shuffle+" (the paper's sets) or a list of
                format strings with one "{}". Applied to text prompts (also inside `MixedPrompt`).
            ensemble: average the conditional vectors over all templates; otherwise each prompt uses one
                template, drawn reproducibly from the set (by `seed` and the prompt text).
            seed: see `ensemble`.
            tiles: tiled inference (`clipseg.tiling`): True for the default scales, a scale (2 = a 2x2 grid of
                overlapping windows), several scales, or a `TileOptions`. The global prediction gates the tiles;
                an image no larger than the model input gives exactly the global result.

        Raises:
            RuntimeError: `set_image` was not called.
            ValueError: no prompts, an empty text prompt, unknown templates, bad tile options.
        """
        if self._features is None or self._original_size is None:
            raise RuntimeError("no image set: call predictor.set_image(image) before predict(...)")
        positive, negatives = _as_list(prompts), _as_list(negative)
        if not positive:
            raise ValueError("predict needs at least one prompt")
        tile_options = TileOptions.parse(tiles)
        with torch.inference_mode():
            conditionals = self.encode_prompts(
                [*positive, *negatives], templates=templates, ensemble=ensemble, seed=seed
            )
            logits = self.decode(self._features, conditionals, torch.zeros(len(conditionals), dtype=torch.long))
            if tile_options is not None:
                logits = self._tiled_logits(self._image, logits, conditionals, tile_options, cache=True)
        return Prediction(
            tuple(_name(p) for p in positive), logits[: len(positive)], logits[len(positive) :], self._original_size
        )

    def predict_batch(
        self,
        images: Sequence[ImageInput],
        prompts: Prompt | Sequence[Prompt],
        *,
        negative: Prompt | Sequence[Prompt] | None = None,
        templates: Templates = "plain",
        ensemble: bool = False,
        seed: int = 0,
        tiles: TilesInput = None,
    ) -> list[Prediction]:
        """Segment several images with the same prompts: the backbone runs over the images in batches of
        `BACKBONE_CHUNK`, the decoder over all image-prompt pairs. Does not change the image stored by `set_image`. Arguments as `predict`."""
        positive, negatives = _as_list(prompts), _as_list(negative)
        if not positive:
            raise ValueError("predict_batch needs at least one prompt")
        tile_options = TileOptions.parse(tiles)
        if not images:
            return []
        rgb_images = [load_image(image) for image in images]
        with torch.inference_mode():
            conditionals = self.encode_prompts(
                [*positive, *negatives], templates=templates, ensemble=ensemble, seed=seed
            )
            features = self.extract_features(rgb_images)
            count = len(conditionals)
            image_index = torch.arange(len(rgb_images)).repeat_interleave(count)
            logits = self.decode(features, conditionals.repeat(len(rgb_images), 1), image_index)
            per_image = [logits[index * count : (index + 1) * count] for index in range(len(rgb_images))]
            if tile_options is not None:
                per_image = [
                    self._tiled_logits(image, own, conditionals, tile_options)
                    for image, own in zip(rgb_images, per_image, strict=True)
                ]
        names = tuple(_name(p) for p in positive)
        predictions = []
        for image, own in zip(rgb_images, per_image, strict=True):
            predictions.append(
                Prediction(names, own[: len(positive)], own[len(positive) :], (image.height, image.width))
            )
        return predictions

    def encode_prompts(
        self,
        prompts: Sequence[Prompt],
        *,
        templates: Templates = "plain",
        ensemble: bool = False,
        seed: int = 0,
    ) -> torch.Tensor:
        """Conditional vectors (P, D) for prompts (see `predict` for the arguments); cached across calls."""
        template_set = resolve_templates(templates)
        with torch.inference_mode():
            texts = [p if isinstance(p, str) else p.text for p in prompts if isinstance(p, (str, MixedPrompt))]
            chosen = {text: self._chosen_templates(text, template_set, ensemble, seed) for text in texts}
            # One batched text-encoder call for every text not cached yet.
            self._cache_texts([template.format(text) for text, templates_ in chosen.items() for template in templates_])
            vectors = []
            for prompt in prompts:
                if isinstance(prompt, str):
                    vectors.append(self._text_vector(prompt, chosen[prompt]))
                elif isinstance(prompt, ImagePrompt):
                    vectors.append(self._image_vector(prompt))
                elif isinstance(prompt, MixedPrompt):
                    text = self._text_vector(prompt.text, chosen[prompt.text])
                    vectors.append(
                        prompt.text_weight * text + (1 - prompt.text_weight) * self._image_vector(prompt.image)
                    )
                else:
                    raise TypeError(f"a prompt is a str, ImagePrompt or MixedPrompt, got {type(prompt).__name__}")
            return torch.stack(vectors)

    def _preprocess(self, image: Image.Image) -> torch.Tensor:
        config = self.model.config
        return preprocess(image, self.image_size, config.image_mean, config.image_std).to(self.device)

    @staticmethod
    def _chosen_templates(text: str, templates: tuple[str, ...], ensemble: bool, seed: int) -> tuple[str, ...]:
        if not text.strip():
            raise ValueError("empty text prompt: say what to segment, e.g. 'a cup'")
        if ensemble or len(templates) == 1:
            return templates
        return (random.Random(f"{seed}\0{text}").choice(templates),)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Conditional vectors (N, D) of texts as given (no templates), each encoded once while it stays cached;
        warns about a text longer than the text encoder's context."""
        texts = list(texts)
        self._cache_texts(texts)
        return torch.stack([self._recall(("text", text)) for text in texts])

    @torch.inference_mode()
    def encode_supports(
        self,
        pixels: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        variant: str | VisualPromptSpec,
        *,
        allow_empty: bool = False,
    ) -> torch.Tensor:
        """Conditional vectors (N, D) of N support images: normalised pixels (3, S, S) at `image_size` and their
        object masks (S, S), prepared by visual prompt engineering `variant` (`clipseg.visual_prompt`).
        `allow_empty` accepts masks without object pixels (the whole image is background, as the released
        evaluation did when a support's object vanished in the resize)."""
        config = self.model.config
        supports = [
            prepare_support(
                image, mask, variant, self.image_size, mean=config.image_mean, std=config.image_std,
                allow_empty=allow_empty,
            )
            for image, mask in zip(pixels, masks, strict=True)
        ]
        pixel_values = torch.stack([support.pixel_values for support in supports]).to(self.device)
        mode = supports[0].token_mask_mode
        token_mask = None if mode is None else torch.stack([support.token_mask for support in supports]).to(self.device)
        return self.model.encode_image(pixel_values, token_mask=token_mask, token_mask_mode=mode or "cls_last")

    def _text_vector(self, text: str, templates: tuple[str, ...]) -> torch.Tensor:
        return self.encode_texts([template.format(text) for template in templates]).mean(dim=0)

    def _cache_texts(self, texts: list[str]) -> None:
        missing = [text for text in dict.fromkeys(texts) if ("text", text) not in self._cache]
        tokenizer = self.model.tokenizer
        context = self.model.config.text.context_length
        for start in range(0, len(missing), TEXT_CHUNK):
            chunk = missing[start : start + TEXT_CHUNK]
            tokens = tokenizer(chunk, context_length=context)
            for text, ids in zip(chunk, tokens.ids, strict=True):
                if ids[-1] != 0 and len(tokenizer.encode(text)) + 2 > context:
                    warnings.warn(
                        f"prompt {shorten(text, 40)!r} is longer than {context} tokens; the rest is ignored",
                        stacklevel=5,
                    )
            for text, vector in zip(chunk, self.model.encode_text(tokens.ids), strict=True):
                self._remember(("text", text), vector)

    def _image_vector(self, prompt: ImagePrompt) -> torch.Tensor:
        key = ("image", prompt.key, self.image_size)
        if key in self._cache:
            return self._recall(key)
        config = self.model.config
        size = self.image_size
        pixels = [preprocess(image, size, config.image_mean, config.image_std) for image, _ in prompt.examples]
        masks = [torch.from_numpy(resize_mask(mask, size)) for _, mask in prompt.examples]
        self._remember(key, self.encode_supports(pixels, masks, prompt.variant).mean(dim=0))
        return self._recall(key)

    def _tiled_logits(
        self,
        image: Image.Image,
        global_logits: torch.Tensor,
        conditionals: torch.Tensor,
        options: TileOptions,
        *,
        cache: bool = False,
    ) -> torch.Tensor:
        """Global logits (N, s, s) -> fused logits (N, h, w) of the global pass and `options`' tiles (unchanged
        when the image needs no tiles). The backbone runs over the tiles in batches of `BACKBONE_CHUNK`; with
        `cache`, the tile activations are kept for later `predict` calls on the same image and options."""
        tiles = plan_tiles(image.height, image.width, options, tile_size=self.image_size)
        if not tiles:
            return global_logits
        if cache and self._tile_features is not None and self._tile_features[0] == tiles:
            features = self._tile_features[1]
        else:
            features = self.extract_features([image.crop(tile.box) for tile in tiles])
            if cache:
                self._tile_features = (tiles, features)
        count = len(conditionals)
        tile_index = torch.arange(len(tiles)).repeat_interleave(count)
        tile_logits = self.decode(features, conditionals.repeat(len(tiles), 1), tile_index)
        return fuse(
            global_logits,
            tile_logits.view(len(tiles), count, *tile_logits.shape[-2:]),
            tiles,
            (image.height, image.width),
            options,
            tile_size=self.image_size,
            token_grid=self.image_size // self.model.config.vision.patch_size,
        )

    def extract_features(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Backbone activations of RGB images (from `load_image`), in batches of `BACKBONE_CHUNK`: one tensor
        (N, tokens, width) per extract layer, image n at index n. `decode` reads them."""
        with torch.inference_mode():
            pixels = torch.stack([self._preprocess(image) for image in images])
            chunks = [self.model.extract_features(chunk) for chunk in pixels.split(BACKBONE_CHUNK)]
            return [torch.cat(layer) for layer in zip(*chunks)]

    def decode(
        self, features: list[torch.Tensor], conditionals: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor:
        """Decoder only: logits (N, h, w) on the CPU for N conditionals (from `encode_prompts`), conditional n read
        against image `image_index[n]` of `features` (from `extract_features`); in chunks of `DECODE_CHUNK`."""
        size = (self.image_size, self.image_size)
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(conditionals), DECODE_CHUNK):
                stop = start + DECODE_CHUNK
                logits = self.model.decode(
                    features,
                    conditionals[start:stop],
                    output_size=size,
                    image_index=image_index[start:stop].to(self.device),
                )
                outputs.append(logits[:, 0].float().cpu())
        return torch.cat(outputs)

    def _remember(self, key: tuple, vector: torch.Tensor) -> None:
        self._cache[key] = vector
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _recall(self, key: tuple) -> torch.Tensor:
        self._cache.move_to_end(key)
        return self._cache[key]


def _as_list(prompts: Prompt | Sequence[Prompt] | None) -> list[Prompt]:
    if prompts is None:
        return []
    if isinstance(prompts, (str, ImagePrompt, MixedPrompt)):
        return [prompts]
    return list(prompts)


def _name(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, ImagePrompt):
        return prompt.name
    return prompt.text
