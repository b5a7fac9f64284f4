"""Options for full-resolution masks: tiled inference (--tiles, --tile-scales), edge-aware refinement (--refine)
and alpha matting of cut-outs (--alpha-matting ...). No torch, numpy or OpenCV at import (`--help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import EXIT_USAGE, CLIError, one_line
from .thresholds import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from ..thresholds import Thresholds
    from ..tiling import TileOptions

PANEL = "Resolution"


class RefineMethod(str, Enum):
    """Edge-aware refinement of the probability maps (`clipseg.refine.refine`)."""

    guided = "guided"


TilesOption = Annotated[
    bool,
    typer.Option(
        "--tiles",
        help="Tiled inference for large photos: overlapping windows (default a 2x2 grid) plus the global pass, "
        "which gates them.",
        rich_help_panel=PANEL,
    ),
]
TileScalesOption = Annotated[
    str | None,
    typer.Option(
        "--tile-scales",
        help="Windows along the longer side per scale, comma-separated, e.g. 2,4 (implies --tiles).",
        show_default=False,
        rich_help_panel=PANEL,
    ),
]
RefineOption = Annotated[
    RefineMethod | None,
    typer.Option(
        "--refine",
        help="Snap the probability maps to the photo's edges: guided (OpenCV guided filter).",
        show_default=False,
        rich_help_panel=PANEL,
    ),
]
AlphaMattingOption = Annotated[
    bool,
    typer.Option(
        "--alpha-matting",
        help="Cut-outs (-f cutout) get a soft alpha matte (pymatting) from a trimap of the probabilities.",
        rich_help_panel=PANEL,
    ),
]
MattingForegroundOption = Annotated[
    float | None,
    typer.Option(
        "--alpha-matting-foreground", min=0.0, max=1.0, help="Trimap: sure foreground from this probability [default: 0.9].", show_default=False,
        rich_help_panel=PANEL,
    ),
]
MattingBackgroundOption = Annotated[
    float | None,
    typer.Option(
        "--alpha-matting-background", min=0.0, max=1.0, help="Trimap: sure background up to this probability [default: 0.1].", show_default=False,
        rich_help_panel=PANEL,
    ),
]
MattingErodeOption = Annotated[
    float | None,
    typer.Option(
        "--alpha-matting-erode", min=0.0,
        help="Trimap: shrink both sure regions by this many pixels; below 1, a fraction of the longer side "
        "[default: 0.005].",
        show_default=False,
        rich_help_panel=PANEL,
    ),
]


@dataclass(frozen=True)
class Resolution:
    """What the run does beyond the global pass: tiles, refinement, alpha matting (options for alpha_matte)."""

    tiles: TileOptions | None = None
    refine: str | None = None
    matting: dict[str, Any] | None = None
    # The threshold the refined maps are cut at (refinement pivots on it); set once the run's threshold is known.
    refine_threshold: float | Thresholds = DEFAULT_THRESHOLD


def resolution_settings(
    tiles: bool,
    tile_scales: str | None,
    refine: RefineMethod | None,
    matting: dict[str, Any] | None = None,
) -> Resolution:
    """Check the options (usage errors as one line) and the optional packages they need."""
    from ..refine import MissingExtraError, check_alpha_options, require_extra
    from ..tiling import TileOptions

    options = None
    try:
        if tile_scales is not None:
            scales = [part.strip() for part in tile_scales.split(",")]
            if not all(part.isdigit() for part in scales):
                raise ValueError(f"--tile-scales takes whole numbers separated by commas, e.g. 2,4; got {tile_scales!r}")
            options = TileOptions(scales=tuple(int(part) for part in scales))
        elif tiles:
            options = TileOptions()
        if matting is not None:
            check_alpha_options(matting)
        require_extra(refine=refine is not None, matting=matting is not None)
    except (ValueError, MissingExtraError) as error:
        raise CLIError(one_line(error), EXIT_USAGE) from None
    return Resolution(options, refine.value if refine is not None else None, matting)
