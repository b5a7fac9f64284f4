"""Image loading and the released model's preprocessing.

`load_image` accepts a path, a PIL image or an array and always returns an 8-bit RGB PIL image in the
orientation a viewer shows (EXIF orientation applied). Every way a file can be unusable (missing, empty, not an
image, truncated, larger than Pillow's decompression-bomb limit) becomes an `ImageLoadError` (a ValueError) or a
FileNotFoundError whose one-line message names the file.

`preprocess` reproduces the hub checkpoints' ViTImageProcessor: PIL bilinear resize of the uint8 image (PIL
antialiases when shrinking), scale to [0, 1], normalise with the model's mean/std (ImageNet for CLIPSeg).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Union

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .messages import first_line

if TYPE_CHECKING:
    import torch

ImageInput = str | os.PathLike | Image.Image | np.ndarray
MaskInput = Union[str, os.PathLike, Image.Image, np.ndarray, "torch.Tensor"]

# Suffixes the CLI picks up when it walks a folder (explicitly named files are tried whatever their suffix).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
# Background that transparent pixels are composited onto: what most viewers show behind a transparent image.
TRANSPARENT_BACKGROUND = (255, 255, 255)


class ImageLoadError(ValueError):
    """A file or array that cannot be used as an image; the message is one line naming the input."""


class NotAnImageError(ImageLoadError):
    """Empty data, or data in no format Pillow reads."""


class ImageTooLargeError(ImageLoadError):
    """An image with more pixels than allowed (Pillow's decompression-bomb limit or an explicit bound)."""


def load_image(source: ImageInput) -> Image.Image:
    """Load an image as 8-bit RGB, with its EXIF orientation applied.

    Args:
        source: a file path; a PIL image; or an array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) with dtype
            uint8, uint16 (full 16-bit range), bool, or float in [0, 1].

    Pixels tagged with an ICC colour profile other than sRGB (Display P3 from phones, Adobe RGB, CMYK print
    profiles) are converted to sRGB, the space CLIP saw in training; a profile that cannot be read is ignored with
    a warning. Grayscale, palette, CMYK, YCbCr and 1-bit images are converted to RGB; transparent pixels (RGBA, LA,
    palette transparency) are composited onto white; 16-bit and 32-bit integer or float grayscale is scaled to 8
    bits (16-bit by 1/257; floats in [0, 1] by 255, other floats by their min/max).

    Raises:
        FileNotFoundError: the path does not exist.
        ImageLoadError: empty file, not an image, truncated/corrupt data, an image above Pillow's
            decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`), or an unsupported array.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(_oriented(source, "image"), "image")
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, (str, os.PathLike)):
        return _open_file(Path(source))
    raise TypeError(f"expected an image path, PIL image or numpy array, got {type(source).__name__}")


def load_mask(source: MaskInput, *, name: str = "mask") -> np.ndarray:
    """Load an object mask as a bool (H, W) array (EXIF orientation applied to files and PIL images).

    Files and 8-bit arrays: pixels >= 128 are object, except when the largest value is 1 (masks stored as 0/1),
    where every non-zero pixel is; a mask with transparency uses its alpha channel; in a palette image every
    non-black colour is object. Bool arrays are taken as they
    are, float arrays are thresholded at 0.5. Colour masks count a pixel as object if any channel qualifies.
    """
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        image = _read_file(Path(source))
    elif isinstance(source, Image.Image):
        image = _oriented(source, name)
    else:
        return _array_to_mask(np.asarray(source.detach().cpu() if hasattr(source, "detach") else source), name)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            return alpha >= 128
    if image.mode == "1":
        return np.asarray(image, dtype=bool)
    if image.mode == "P":
        # Label masks (e.g. Pascal VOC) colour each class; any non-black colour is object.
        return np.asarray(image.convert("RGB")).max(axis=2) > 0
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
        return _array_to_mask(np.asarray(image), name)
    return _array_to_mask(np.asarray(image.convert("RGB")), name)


def preprocess(
    image: Image.Image,
    size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """An RGB PIL image -> normalised float tensor (3, height, width) for the model.

    `size` is the side of the square input (352 for the released models) or (height, width). The uint8 image is
    resized with PIL's bilinear filter, scaled to [0, 1] and normalised, as the hub's ViTImageProcessor does.
    """
    import torch

    height, width = (size, size) if isinstance(size, int) else size
    if image.mode != "RGB":
        raise ValueError(f"preprocess expects an RGB image (use load_image), got mode {image.mode}")
    resized = bounded_resize(image, (width, height)) if image.size != (width, height) else image
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (pixels - mean_t) / std_t


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """A bool (H, W) mask -> float32 (height, width) coverage in [0, 1] (PIL bilinear, antialiased when shrinking),
    so that an object smaller than one output pixel still leaves a non-zero trace."""
    height, width = (size, size) if isinstance(size, int) else size
    image = Image.fromarray(mask.astype(np.float32), mode="F")
    return np.clip(np.asarray(bounded_resize(image, (width, height))), 0.0, 1.0)


def bounded_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """PIL's bilinear resize to (width, height), in memory bounded by the input and output.

    Pillow resizes the width first, keeping every input row: a 1 x 20,000,000 image going to 352 x 352 would pass
    through a 352 x 20,000,000 intermediate (28 GB). When that intermediate is several times the input, the height
    is resized first instead (the same filter, rounded once more in between); other images are resized exactly as
    before, in one call."""
    width, height = size
    if width * image.height > 4 * image.width * image.height and height < image.height:
        image = image.resize((image.width, height), Image.Resampling.BILINEAR)
    return image.resize((width, height), Image.Resampling.BILINEAR)


def _open_file(path: Path) -> Image.Image:
    return _to_rgb(_read_file(path), str(path))


def read_image_file(path: str | os.PathLike, *, orient: bool = False) -> Image.Image:
    """Decode an image file completely, in its own mode; every problem is an `ImageLoadError` (or
    FileNotFoundError) naming the file. Without `orient` the pixels stay as stored, which is what dataset
    annotations (polygons, masks, boxes) refer to."""
    return _read_file(Path(path), orient=orient)


def _read_file(path: Path, *, orient: bool = True) -> Image.Image:
    """Decode a file completely (so truncation shows here), oriented but in its own mode."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a directory, not an image file")
    if not path.is_file():  # a FIFO or device could block or never end
        raise ImageLoadError(f"{path}: not a regular file, expected an image file")
    try:
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{path}: empty file (0 bytes)")
        with open(path, "rb") as file:
            return _decode(file, str(path), orient=orient)
    except PermissionError:
        raise ImageLoadError(f"{path}: permission denied") from None


def decode_image_bytes(data: bytes, *, name: str = "upload", max_pixels: int | None = None) -> Image.Image:
    """Decode an image held in memory (an upload), oriented but in its own mode; nothing touches the disk.

    `max_pixels` refuses larger images from their header, before any pixel is decoded (on top of Pillow's
    decompression-bomb limit). Pass the result to `load_image` (RGB) or `load_mask` (object mask).

    Raises:
        ImageTooLargeError: more pixels than `max_pixels` or Pillow's limit.
        NotAnImageError: empty, or not in a format Pillow reads.
        ImageLoadError: truncated or corrupt data.
    """
    if not data:
        raise NotAnImageError(f"{name}: empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(file: BinaryIO, name: str, max_pixels: int | None = None, *, orient: bool = True) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; refuse those images as well.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as opened:
                if max_pixels is not None and opened.width * opened.height > max_pixels:
                    raise ImageTooLargeError(
                        f"{name}: {opened.width}x{opened.height} image has more than the allowed "
                        f"{max_pixels:,} pixels"
                    )
                frames = getattr(opened, "n_frames", 1)
                if frames > 1:
                    kind = "pages" if opened.format == "TIFF" else "frames"
                    warnings.warn(f"{name}: {opened.format} image with {frames} {kind}; only the first is used", stacklevel=4)
                opened.load()
                # Orient while the file is open: TIFF keeps its orientation tag outside `info`.
                return _oriented(opened, name) if orient else opened.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(
            f"{name}: image larger than Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels "
            "(raise PIL.Image.MAX_IMAGE_PIXELS, or --max-pixels in the CLI, if you trust the file)"
        ) from None
    except UnidentifiedImageError:
        raise NotAnImageError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except PermissionError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if isinstance(error, ImageLoadError):
            raise
        raise ImageLoadError(f"{name}: truncated or corrupt image ({first_line(error)})") from None


def _oriented(image: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block leaves the pixels as stored (with a warning)."""
    try:
        return ImageOps.exif_transpose(image)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError) as error:
        warnings.warn(f"{name}: unreadable EXIF orientation ignored ({error})", stacklevel=3)
        return image


_SRGB = ImageCms.createProfile("sRGB")
# Modes whose ICC profiles we apply (littleCMS transforms them; alpha is carried through for RGBA).
_ICC_MODES = {"RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB"}


def _to_srgb(image: Image.Image, name: str) -> Image.Image:
    """Convert pixels tagged with a non-sRGB ICC profile to sRGB (perceptual intent); others are returned as is."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in _ICC_MODES:
        return image
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in ImageCms.getProfileDescription(profile).lower().replace(" ", ""):
            return image
        converted = ImageCms.profileToProfile(image, profile, _SRGB, outputMode=_ICC_MODES[image.mode])
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as error:
        warnings.warn(f"{name}: unreadable ICC colour profile ignored ({error})", stacklevel=4)
        return image
    return converted


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    if image.width < 1 or image.height < 1:
        raise ImageLoadError(f"{name}: image has no pixels ({image.width}x{image.height})")
    image = _to_srgb(image, name)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(image), name)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_to_uint8(values: np.ndarray, name: str) -> np.ndarray:
    """Map any numeric pixel array to uint8: 16-bit ranges by 1/257, [0, 1] floats by 255, the rest by min/max."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == bool:
        return values.astype(np.uint8) * 255
    if values.dtype.kind in "iu" and values.size and values.min() >= 0:
        if values.dtype == np.uint16 or 255 < values.max() <= 65535:
            return np.round(values / 257.0).astype(np.uint8)
        if values.max() <= 255:
            return values.astype(np.uint8)
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageLoadError(f"{name}: image contains NaN or infinite values")
    if values.min() >= 0.0 and values.max() <= 1.0:
        return np.round(values * 255.0).astype(np.uint8)
    low, high = values.min(), values.max()
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.round(scaled * 255.0).astype(np.uint8)


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(
            f"image array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageLoadError(f"image array has no pixels (shape {array.shape})")
    if array.dtype.kind not in "biuf":
        raise ImageLoadError(f"image array must be numeric, got dtype {array.dtype}")
    pixels = _scale_to_uint8(np.ascontiguousarray(array), "image array")
    image = Image.fromarray(pixels)
    return _to_rgb(image, "image array")


def _array_to_mask(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 3:
        array = array.any(axis=2) if array.dtype == bool else array.max(axis=2)
    if array.ndim != 2:
        raise ValueError(f"{name}: a mask must be a 2-D array (H, W), got shape {array.shape}")
    if array.dtype == bool:
        return array.copy()
    if array.dtype.kind == "f":
        return array >= 0.5
    if array.dtype.kind in "iu":
        if array.max(initial=0) <= 1:
            return array > 0
        return array >= (128 if array.max() <= 255 else 32768)
    raise ValueError(f"{name}: unsupported mask dtype {array.dtype}")
