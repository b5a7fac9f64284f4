"""Edge-aware refinement of probability maps, and alpha matting for cut-outs.

CLIPSeg's decoder sees a 22x22 token grid, so its probability map, upsampled to the photo, is a smooth blob whose
edges ignore the photo's edges. `refine` snaps it to them with the photo as guide; `alpha_matte` turns it into a
soft alpha matte (hair, fur, motion blur) for cut-outs.

- ``method="guided"``: OpenCV's guided filter (He et al., `cv2.ximgproc.guidedFilter`, from
  opencv-contrib-python-headless), applied `iterations` times with a radius that shrinks each time (coarse to
  fine: the first pass moves an edge up to about half a token, the later ones place it to the pixel), each pass
  followed by a contrast step around `center` (the threshold the map will be cut at, default 0.5) that undoes
  the filter's blur without moving the mask's decision. The radius defaults to a fraction of the
  image side, so the same defaults suit any resolution.
- `alpha_matte`: a trimap from the probabilities (sure foreground > `foreground`, sure background <= `background`,
  each shrunk by `erode` pixels; the rest unknown), solved with pymatting's closed-form matting. Matting costs
  grow fast with the unknown area, so it runs on the bounding box of the unknown band, downscaled to at most
  `max_pixels`; the alpha is upsampled back with the guided filter (guided upsampling keeps edges) and
  replaces the probabilities only inside the unknown band. Without any sure foreground or sure background
  pixel there is nothing to learn colours from, and the (clipped) probabilities are returned as they are.

Both take numpy or torch (H, W) maps in [0, 1] and return the same kind (torch: same dtype and device).
OpenCV and pymatting are the optional ``refine`` extra (``pip install 'clipseg[refine]'``) and are imported on
first use.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .image import ImageInput, load_image
from .thresholds import binary_mask

if TYPE_CHECKING:
    import torch

METHODS = ("guided",)
# Defaults chosen with benchmarks/bench_refine.py on synthetic scenes (see the README).
DEFAULT_RADIUS = 0.02  # of the longer image side, for the first pass
DEFAULT_EPS = 1e-2  # guided-filter regularisation for colours in [0, 1]: small values copy texture into the mask
DEFAULT_ITERATIONS = 3
DEFAULT_SHRINK = 0.5  # radius factor from one pass to the next
DEFAULT_SHARPNESS = 4.0  # slope of the contrast step after each pass
DEFAULT_CENTER = 0.5  # the contrast step's pivot; Prediction.refined passes each prompt's threshold
DEFAULT_FOREGROUND = 0.9
DEFAULT_BACKGROUND = 0.1
DEFAULT_ERODE = 0.005  # of the longer image side
DEFAULT_MAX_PIXELS = 300_000
# Tolerated excursion of the input beyond [0, 1] (float rounding); anything larger is an error.
_RANGE_TOLERANCE = 1e-4


class MissingExtraError(ImportError):
    """An optional dependency of this module is not installed; the message names the extra."""


def refine(probabilities: Any, image: ImageInput, method: str = "guided", **options: Any) -> Any:
    """Refine an (H, W) probability map in [0, 1] with the (H, W) photo as guide.

    Args:
        probabilities: numpy array or torch tensor (H, W), floats in [0, 1].
        image: the photo (H, W, 3) uint8 RGB array, a PIL image, or a path (see `clipseg.image.load_image`).
        method: "guided" (the only one; see the module docstring).
        **options: for "guided": ``radius`` (pixels if >= 1, else a fraction of the longer side; default 0.02),
            ``eps`` (default 1e-2), ``iterations`` (default 3), ``shrink`` (radius factor between passes,
            default 0.5), ``sharpness`` (slope of the contrast step, default 4; 0 disables it), ``center`` (the
            probability the contrast step pivots on: the threshold the refined map will be cut at, default 0.5).

    Returns:
        The refined probabilities, same kind (numpy/torch), shape, dtype and device as `probabilities`.

    Raises:
        ValueError: unknown method or option, bad option values, a map that is not 2-D, not finite or outside
            [0, 1], or an image whose size differs from the map's.
        MissingExtraError: OpenCV (the ``refine`` extra) is not installed.
    """
    settings = check_refine_options(method, options)
    values, restore = _as_array(probabilities)
    guide = _guide(image, values.shape)
    radius = _pixels("radius", settings["radius"], values.shape)
    refined = guided(
        values,
        guide,
        radius,
        settings["eps"],
        settings["iterations"],
        settings["shrink"],
        settings["sharpness"],
        settings["center"],
    )
    return restore(refined)


def check_refine_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate a refine method and its options (see `refine`); returns every option with defaults filled in."""
    if method not in METHODS:
        raise ValueError(f"unknown refine method {method!r}; choose one of {', '.join(METHODS)}")
    settings = _options(
        options,
        {
            "radius": DEFAULT_RADIUS,
            "eps": DEFAULT_EPS,
            "iterations": DEFAULT_ITERATIONS,
            "shrink": DEFAULT_SHRINK,
            "sharpness": DEFAULT_SHARPNESS,
            "center": DEFAULT_CENTER,
        },
        f"refine method {method!r}",
    )
    _positive("eps", settings["eps"])
    _in_range("shrink", settings["shrink"], 0.0, 1.0)
    _in_range("sharpness", settings["sharpness"], 0.0, math.inf, low_inclusive=True)
    _in_range("center", settings["center"], 0.0, 1.0, low_inclusive=True)
    iterations = settings["iterations"]
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"refine option iterations must be a whole number >= 1, got {iterations!r}")
    if settings["radius"] <= 0:
        raise ValueError(f"option radius must be > 0 (pixels, or a fraction of the image side), got {settings['radius']}")
    return settings


def guided(
    probabilities: np.ndarray,
    guide: np.ndarray,
    radius: float,
    eps: float,
    iterations: int = 1,
    shrink: float = DEFAULT_SHRINK,
    sharpness: float = 0.0,
    center: float = DEFAULT_CENTER,
) -> np.ndarray:
    """Coarse-to-fine guided filtering of float32 `probabilities` (H, W) with a float32 guide (H, W, 3) in [0, 1]."""
    cv2 = _cv2()
    result = probabilities
    for step in range(iterations):
        pass_radius = max(1, round(radius * shrink**step))
        result = cv2.ximgproc.guidedFilter(guide, result, pass_radius, eps, -1)
        if sharpness > 0:
            result = center + sharpness * (result - center)
        result = np.clip(result, 0.0, 1.0)
    return result.astype(np.float32, copy=False)


def alpha_matte(probabilities: Any, image: ImageInput, **options: Any) -> Any:
    """A soft alpha matte (H, W) in [0, 1] for the object the probabilities mark, by pymatting's closed-form
    matting from a trimap (see the module docstring).

    Args:
        probabilities: numpy array or torch tensor (H, W), floats in [0, 1].
        image: the photo (H, W, 3) uint8 RGB array, a PIL image, or a path.
        **options: ``foreground`` (sure-foreground threshold, default 0.9), ``background`` (sure-background
            threshold, default 0.1), ``erode`` (pixels if >= 1, else a fraction of the longer side, by which both
            sure regions shrink; default 0.005), ``max_pixels`` (largest area matted at once; default 300 000).

    Returns:
        The alpha matte, same kind (numpy/torch), shape, dtype and device as `probabilities`; the clipped
        probabilities when the trimap has no sure foreground or no sure background.

    Raises:
        ValueError: unknown options, bad values (``background`` must be below ``foreground``), bad inputs as
            for `refine`.
        MissingExtraError: pymatting or OpenCV (the ``refine`` extra) is not installed.
    """
    settings = check_alpha_options(options)
    values, restore = _as_array(probabilities)
    guide = _guide(image, values.shape)
    erode = _pixels("erode", settings["erode"], values.shape, allow_zero=True)
    trimap = make_trimap(values, settings["foreground"], settings["background"], erode)
    return restore(matte(trimap, guide, values, settings["max_pixels"]))


def check_alpha_options(options: dict[str, Any]) -> dict[str, Any]:
    """Validate `alpha_matte`'s options; returns every option with defaults filled in."""
    settings = _options(
        options,
        {
            "foreground": DEFAULT_FOREGROUND,
            "background": DEFAULT_BACKGROUND,
            "erode": DEFAULT_ERODE,
            "max_pixels": DEFAULT_MAX_PIXELS,
        },
        "alpha_matte",
    )
    foreground, background = settings["foreground"], settings["background"]
    _in_range("foreground", foreground, 0.0, 1.0)
    _in_range("background", background, 0.0, 1.0, low_inclusive=True)
    if background >= foreground:
        raise ValueError(f"alpha_matte option background ({background}) must be below foreground ({foreground})")
    max_pixels = settings["max_pixels"]
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 64:
        raise ValueError(f"alpha_matte option max_pixels must be a whole number >= 64, got {max_pixels!r}")
    if settings["erode"] < 0:
        raise ValueError(f"option erode must be >= 0 (pixels, or a fraction of the image side), got {settings['erode']}")
    return settings


def require_extra(*, refine: bool = True, matting: bool = False) -> None:
    """Raise `MissingExtraError` now if refinement (OpenCV) or matting (pymatting) could not run."""
    if refine or matting:
        _cv2()
    if matting:
        _pymatting()


def make_trimap(probabilities: np.ndarray, foreground: float, background: float, erode: float) -> np.ndarray:
    """float32 trimap (H, W): 1 sure foreground, 0 sure background, 0.5 unknown. The sure regions are
    ``p > foreground`` and ``p <= background`` (`clipseg.thresholds.binary_mask` and its complement), each eroded
    by `erode` pixels (a disk)."""
    cv2 = _cv2()
    sure_foreground = binary_mask(probabilities, foreground).astype(np.uint8)
    sure_background = (~binary_mask(probabilities, background)).astype(np.uint8)
    size = 2 * round(erode) + 1
    if size > 1:
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        # Outside the image counts as neither: an object touching the border stays sure there.
        sure_foreground = cv2.erode(sure_foreground, disk, borderType=cv2.BORDER_REPLICATE)
        sure_background = cv2.erode(sure_background, disk, borderType=cv2.BORDER_REPLICATE)
    trimap = np.full(probabilities.shape, 0.5, np.float32)
    trimap[sure_foreground.astype(bool)] = 1.0
    trimap[sure_background.astype(bool)] = 0.0
    return trimap


def matte(trimap: np.ndarray, guide: np.ndarray, fallback: np.ndarray, max_pixels: int) -> np.ndarray:
    """Closed-form matting of the unknown band of `trimap` with the colours of `guide`, at most `max_pixels` at
    once; `fallback` (clipped) where the trimap lacks sure foreground or sure background."""
    unknown = trimap == 0.5
    if not (trimap == 1.0).any() or not (trimap == 0.0).any():
        return np.clip(fallback, 0.0, 1.0).astype(np.float32)
    if not unknown.any():
        return trimap.copy()
    estimate_alpha_cf = _pymatting().estimate_alpha_cf
    cv2 = _cv2()
    height, width = trimap.shape
    rows, cols = np.nonzero(unknown)
    pad = 8  # known pixels around the band: the matting learns colours from them
    top, bottom = max(0, rows.min() - pad), min(height, rows.max() + pad + 1)
    left, right = max(0, cols.min() - pad), min(width, cols.max() + pad + 1)
    box_trimap, box_guide = trimap[top:bottom, left:right], guide[top:bottom, left:right]
    box_height, box_width = box_trimap.shape
    factor = min(1.0, math.sqrt(max_pixels / (box_height * box_width)))
    if factor < 1.0:
        size = (max(2, round(box_width * factor)), max(2, round(box_height * factor)))
        small_guide = cv2.resize(box_guide, size, interpolation=cv2.INTER_AREA)
        small_trimap = cv2.resize(box_trimap, size, interpolation=cv2.INTER_NEAREST)
    else:
        small_guide, small_trimap = box_guide, box_trimap
    if (small_trimap == 0.5).any() and (small_trimap == 1.0).any() and (small_trimap == 0.0).any():
        # Area resampling can leave colours a rounding error above 1, which pymatting warns about.
        colours = np.clip(small_guide, 0.0, 1.0).astype(np.float64)
        # pymatting prints a "PERFORMANCE WARNING" when its preconditioner needs a retry; not the user's concern.
        with contextlib.redirect_stdout(io.StringIO()):
            small_alpha = estimate_alpha_cf(colours, small_trimap.astype(np.float64))
    else:
        small_alpha = np.clip(small_trimap, 0.0, 1.0)
    alpha = small_alpha.astype(np.float32)
    if factor < 1.0:
        alpha = cv2.resize(alpha, (box_width, box_height), interpolation=cv2.INTER_LINEAR)
        # Guided upsampling: put the upsampled alpha's edges back on the photo's edges.
        radius = max(1, round(1.0 / factor))
        alpha = cv2.ximgproc.guidedFilter(box_guide, alpha, radius, 1e-4, -1)
    result = trimap.copy()
    band = unknown[top:bottom, left:right]
    result[top:bottom, left:right][band] = np.clip(alpha[band], 0.0, 1.0)
    return result


def _options(given: dict[str, Any], defaults: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} for {where}; expected one of {', '.join(defaults)}")
    settings = {**defaults, **given}
    for name, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{where} option {name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{where} option {name} must be finite, got {value!r}")
    return settings


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"refine option {name} must be > 0, got {value}")


def _in_range(name: str, value: float, low: float, high: float, *, low_inclusive: bool = False) -> None:
    if not ((low <= value if low_inclusive else low < value) and value <= high):
        bracket = "[" if low_inclusive else "("
        raise ValueError(f"option {name} must lie in {bracket}{low}, {high}], got {value}")


def _pixels(name: str, value: float, shape: tuple[int, ...], *, allow_zero: bool = False) -> float:
    """A length option: pixels when >= 1, otherwise a fraction of the longer image side."""
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"option {name} must be {'>= 0' if allow_zero else '> 0'} (pixels, or a fraction of the image side), got {value}")
    return float(value) if value >= 1 else float(value) * max(shape)


def _as_array(probabilities: Any) -> tuple[np.ndarray, Any]:
    """(float32 numpy copy, function mapping a float32 result back to the input's kind, dtype and device)."""
    if hasattr(probabilities, "detach") and hasattr(probabilities, "device"):
        tensor = probabilities
        if tensor.is_complex() or not tensor.is_floating_point():
            raise ValueError(f"probabilities must be a float tensor in [0, 1], got dtype {tensor.dtype}")
        values = tensor.detach().float().cpu().numpy()

        def restore(result: np.ndarray) -> torch.Tensor:
            import torch

            return torch.from_numpy(np.ascontiguousarray(result)).to(device=tensor.device, dtype=tensor.dtype)

    else:
        array = np.asarray(probabilities)
        if array.dtype.kind != "f":
            raise ValueError(f"probabilities must be a float array in [0, 1], got dtype {array.dtype}")
        values = array.astype(np.float32)
        dtype = array.dtype

        def restore(result: np.ndarray) -> np.ndarray:
            return result.astype(dtype, copy=False)

    if values.ndim != 2:
        raise ValueError(f"probabilities must be an (H, W) map, got shape {tuple(values.shape)}")
    if values.size == 0:
        raise ValueError(f"probabilities map is empty (shape {tuple(values.shape)})")
    if not np.isfinite(values).all():
        raise ValueError("probabilities contain NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(f"probabilities must lie in [0, 1], got values from {low:.4g} to {high:.4g}")
    return np.clip(values, 0.0, 1.0), restore


def _guide(image: ImageInput, shape: tuple[int, int]) -> np.ndarray:
    """The photo as float32 (H, W, 3) in [0, 1], checked against the map's shape."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        pixels = image
    else:
        pixels = np.asarray(load_image(image))
    if pixels.shape[:2] != tuple(shape):
        raise ValueError(
            f"image is {pixels.shape[1]}x{pixels.shape[0]} but the probabilities are {shape[1]}x{shape[0]} "
            "(they must have the same size)"
        )
    return np.ascontiguousarray(pixels, dtype=np.float32) / 255.0


def _cv2():
    try:
        import cv2

        cv2.ximgproc  # noqa: B018 - the contrib module, absent from plain opencv-python
    except (ImportError, AttributeError):
        raise MissingExtraError(
            "refinement needs OpenCV's contrib modules: pip install 'clipseg[refine]' "
            "(opencv-contrib-python-headless)"
        ) from None
    return cv2


def _pymatting():
    try:
        import pymatting
    except ImportError:
        raise MissingExtraError("alpha matting needs pymatting: pip install 'clipseg[refine]'") from None
    return pymatting
