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
from collections.abc import Sequence

import torch
from PIL import Image

from .image import ImageInput, load_image, preprocess, resize_mask
from .messages import shorten
from .model.interface import SegmentationModel
from .prediction import Prediction
from .prompts import ImagePrompt, MixedPrompt, Prompt, prompt_list, prompt_name
from .templates import TemplateSet, resolve_templates
from .tiling import Tile, TileOptions, TilesInput, fuse, plan_tiles
from .visual_prompt import VisualPromptSpec, prepare_support

# Prompt-image pairs per decoder call: bounds memory (the refined head keeps a 32-channel map at full size).
DECODE_CHUNK = 8
# Images per backbone call: larger batches were measured slower per image on CPU (activations leave the cache).
BACKBONE_CHUNK = 4
TEXT_CHUNK = 64

Templates = TemplateSet | Sequence[str]


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
        positive, negatives = prompt_list(prompts), prompt_list(negative)
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
        names = tuple(prompt_name(p) for p in positive)
        return Prediction(names, logits[: len(positive)], logits[len(positive) :], self._original_size)

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
        positive, negatives = prompt_list(prompts), prompt_list(negative)
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
        names = tuple(prompt_name(p) for p in positive)
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

    def extract_features(
        self, images: Sequence[Image.Image], *, batch_size: int = BACKBONE_CHUNK
    ) -> list[torch.Tensor]:
        """Backbone activations of RGB images (from `load_image`), `batch_size` images per backbone call: one tensor
        (N, tokens, width) per extract layer, image n at index n. `decode` reads them."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        with torch.inference_mode():
            pixels = torch.stack([self._preprocess(image) for image in images])
            chunks = [self.model.extract_features(chunk) for chunk in pixels.split(batch_size)]
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

