"""Answers out: every mask, soft mask and label map is encoded by the same functions the CLI writes its files
with (`clipseg.outputs`), so the bytes are identical."""

from __future__ import annotations

from ..outputs import encode_rle, label_image, mask_image, png_bytes, rle_annotation
from ..postprocess import threshold as threshold_mask
from ..predictor import Prediction

BACKGROUND = "background"
# The first of each is the default.
SEGMENT_FORMATS = ("json", "png", "soft", "float32")
LABEL_FORMATS = ("png", "json")


def mask_png(prediction: Prediction, threshold: float) -> bytes:
    """Binary mask PNG of the single prompt, as `clipseg segment` writes it (0/255, 8-bit grey)."""
    return png_bytes(mask_image(threshold_mask(prediction.probability(0).numpy(), threshold)))


def soft_png(prediction: Prediction) -> bytes:
    """8-bit soft mask PNG of the single prompt, as `clipseg segment -f soft` writes it."""
    return png_bytes(mask_image(prediction.probability(0).numpy()))


def probabilities_float32(prediction: Prediction) -> bytes:
    """Every prompt's probabilities at the image's size as little-endian float32, prompt-major then row-major:
    what the page thresholds (`p > threshold` in float32 is exactly the `png` answer's test, `binary_mask`)."""
    maps = (prediction.probability(index).numpy().astype("<f4", copy=False) for index in range(len(prediction)))
    return b"".join(array.tobytes() for array in maps)


def segment_json(image_id: str, size: tuple[int, int], prediction: Prediction, threshold: float) -> dict:
    """`{"image_id", "width", "height", "prompts": [{"prompt", "rle", "area", "mean_probability"}]}`, one prompt
    at a time (a full-size map of a large image is big)."""
    entries = []
    for index, name in enumerate(prediction.names):
        probabilities = prediction.probability(index).numpy()
        annotation = rle_annotation(
            threshold_mask(probabilities, threshold), probabilities, prompt=name, threshold=threshold
        )
        entries.append(
            {
                "prompt": name,
                "rle": annotation["segmentation"],
                "area": annotation["area"],
                "mean_probability": annotation["score"],
            }
        )
    return {"image_id": image_id, "width": size[1], "height": size[0], "prompts": entries}


def labels_png(prediction: Prediction, background_threshold: float) -> bytes:
    """Palette label map PNG (0 background, 1.. the prompts), as `clipseg labels` writes NAME.labels.png."""
    return png_bytes(label_image(prediction.label_map(background_threshold).numpy(), len(prediction)))


def labels_json(image_id: str, size: tuple[int, int], prediction: Prediction, background_threshold: float) -> dict:
    """`{"image_id", "width", "height", "labels": [background, prompts...], "rle": {label: COCO RLE}}`."""
    label_map = prediction.label_map(background_threshold).numpy()
    names = [BACKGROUND, *prediction.names]
    return {
        "image_id": image_id,
        "width": size[1],
        "height": size[0],
        "labels": names,
        "rle": {name: encode_rle(label_map == value) for value, name in enumerate(names)},
    }
