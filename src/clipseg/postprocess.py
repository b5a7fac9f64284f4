"""Mask post-processing on numpy arrays: threshold, small-component removal, dilate/erode, invert, feather.

All functions take and return (H, W) arrays and leave their input untouched. Distances are Euclidean pixels:
dilating by r adds every pixel within distance r of the mask (a disk-shaped structuring element), computed with
a distance transform so the cost does not grow with r.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .thresholds import binary_mask

DEFAULT_THRESHOLD = 0.4


def threshold(probabilities: np.ndarray, value: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Probabilities (H, W) in [0, 1] -> bool mask of the pixels with probability > `value`
    (`clipseg.thresholds.binary_mask`)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {value}")
    return binary_mask(np.asarray(probabilities), value)


def dilate(mask: np.ndarray, pixels: float) -> np.ndarray:
    """Grow a bool mask by `pixels` (every pixel within that Euclidean distance of the mask joins it)."""
    mask = _as_bool(mask)
    if pixels < 0:
        raise ValueError(f"dilation radius must be >= 0 pixels, got {pixels}")
    if pixels == 0 or not mask.any():
        return mask.copy()
    return _ndimage().distance_transform_edt(~mask) <= pixels


def erode(mask: np.ndarray, pixels: float) -> np.ndarray:
    """Shrink a bool mask by `pixels`: keep the pixels farther than that from the background. The image border
    does not count as background, so objects touching it are not eaten away from that side."""
    mask = _as_bool(mask)
    if pixels < 0:
        raise ValueError(f"erosion radius must be >= 0 pixels, got {pixels}")
    if pixels == 0 or mask.all():
        return mask.copy()
    return _ndimage().distance_transform_edt(mask) > pixels


def invert(mask: np.ndarray) -> np.ndarray:
    """Swap object and background: bool masks are negated, soft masks in [0, 1] become 1 - mask."""
    mask = np.asarray(mask)
    return ~mask if mask.dtype == bool else 1.0 - mask


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop the 8-connected components of a bool mask that have fewer than `min_area` pixels."""
    mask = _as_bool(mask)
    if min_area < 0:
        raise ValueError(f"minimum component area must be >= 0 pixels, got {min_area}")
    if min_area <= 1 or not mask.any():
        return mask.copy()
    labels, count = _ndimage().label(mask, structure=np.ones((3, 3), dtype=bool))
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = areas >= min_area
    keep[0] = False
    return keep[labels]


def feather(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Soften a mask's edges with a Gaussian blur of standard deviation `sigma` pixels -> float32 in [0, 1]."""
    if sigma < 0:
        raise ValueError(f"feather sigma must be >= 0 pixels, got {sigma}")
    soft = np.asarray(mask, dtype=np.float32)
    if sigma == 0:
        return soft.copy()
    return np.clip(_ndimage().gaussian_filter(soft, sigma=sigma, mode="nearest"), 0.0, 1.0)


@dataclass(frozen=True)
class MaskOptions:
    """How a probability map becomes a mask, in this order: threshold, drop components smaller than `min_area`
    pixels, dilate, erode (both = a closing that fills gaps), invert, feather (soft edges).

    Attributes:
        threshold: probability above which a pixel is object.
        min_area: components (8-connected) with fewer pixels are removed; 0 keeps all.
        dilate: pixels to grow the mask by.
        erode: pixels to shrink the mask by.
        invert: output the background instead of the object.
        feather: Gaussian sigma in pixels for soft edges; 0 keeps a hard mask.
    """

    threshold: float = DEFAULT_THRESHOLD
    min_area: int = 0
    dilate: float = 0.0
    erode: float = 0.0
    invert: bool = False
    feather: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        for name in ("min_area", "dilate", "erode", "feather"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def binary(self, probabilities: np.ndarray) -> np.ndarray:
        """Probabilities (H, W) -> bool mask: every step except feathering."""
        mask = threshold(probabilities, self.threshold)
        mask = remove_small_components(mask, self.min_area)
        mask = dilate(mask, self.dilate)
        mask = erode(mask, self.erode)
        return invert(mask) if self.invert else mask

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Probabilities (H, W) -> bool mask, or float32 alpha in [0, 1] when `feather` > 0."""
        mask = self.binary(probabilities)
        return feather(mask, self.feather) if self.feather > 0 else mask


def _ndimage():
    # Imported on first use: scipy.ndimage takes ~0.2 s to import, and most runs need no clean-up.
    from scipy import ndimage

    return ndimage


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    return mask if mask.dtype == bool else mask > 0
