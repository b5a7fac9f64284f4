"""The paper's tables: their layouts (which of our values each column shows) and the published numbers.

Numbers are quoted from Lüddecke & Ecker, "Image Segmentation Using Text and Image Prompts", CVPR 2022, in
percent (Table 2: percentage points of ΔP(object)); None marks a "-" in the paper. Column keys name entries of
`clipseg.evaluation.engine.Row.values`; ``@t`` is at the model's threshold, ``@best`` at the best one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """A table column: its header, the key of our value, and whether values are shown in percent."""

    header: str
    key: str
    percent: bool = True


@dataclass(frozen=True)
class PaperTable:
    """A table of the paper: layout, published rows and notes on how our numbers relate to them."""

    number: str
    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[str, tuple[float | None, ...]], ...]
    notes: tuple[str, ...] = ()

    def paper_row(self, name: str | None) -> tuple[float | None, ...] | None:
        """The published values of the row called `name`, or None if the paper has no such row."""
        for row_name, values in self.rows:
            if row_name == name:
                return values
        return None


_T = Column("t", "t", percent=False)
_ONE_SHOT = (_T, Column("mIoU", "miou@t"), Column("IoU_BIN", "biniou@t"), Column("AP", "ap"))

TABLE2_LABELS: dict[str, str] = {
    "cls_mask_last": "CLIP masking CLS in layer 11",
    "cls_mask_all": "CLIP masking CLS in all layers",
    "all_tokens_all_layers": "CLIP masking all in all layers",
    "dye_red_grayscale": "dye object red in grays. image",
    "red_outline": "add red object outline",
    "bg_intensity_50": "BG intensity 50%",
    "bg_intensity_10": "BG intensity 10%",
    "bg_intensity_0": "BG intensity 0%",
    "blur": "BG blur",
    "blur_bg_intensity_10": "BG blur + intensity 10%",
    "crop_large_context": "crop large context",
    "crop": "crop",
    "crop_blur": "crop & BG blur",
    "crop_bg_intensity_10": "crop & BG intensity 10%",
    "crop_blur_highlight": "crop & BG intensity 10% + BG blur",
}
"""Table 2's row label of each visual prompt variant of `clipseg.visual_prompt.VARIANTS`."""

_TABLE2_VALUES = (1.34, 1.71, -14.44, 1.21, 2.29, 3.08, 13.85, 23.40, 13.15, 21.73, 6.27, 13.60, 15.34, 21.73, 23.50)

TABLES: dict[str, PaperTable] = {
    "2": PaperTable(
        "2",
        "Visual prompt engineering: average improvement of object probability ΔP(object), CLIP alone, LVIS",
        (Column("ΔP(object)", "delta_p"),),
        tuple((label, (value,)) for label, value in zip(TABLE2_LABELS.values(), _TABLE2_VALUES)),
        (
            "ΔP = P(target name | highlighted image) - P(target name | plain image), softmax over "
            "'a photo of a <name>' of the objects in the image, averaged over samples (the paper: 1,600 LVIS samples).",
        ),
    ),
    "3": PaperTable(
        "3",
        "Referring expression segmentation on PhraseCut (test)",
        (_T, Column("mIoU", "text/miou@t"), Column("IoU_FG", "text/fgiou@t"), Column("AP", "text/ap")),
        (
            ("CLIPSeg (PC+)", (0.3, 43.4, 54.7, 76.7)),
            ("CLIPSeg (PC, D = 128)", (0.3, 48.2, 56.5, 78.2)),
            ("CLIPSeg (PC)", (0.3, 46.1, 56.2, 78.2)),
            ("CLIP-Deconv", (0.3, 37.7, 49.5, 71.2)),
            ("ViTSeg (PC+)", (0.1, 28.4, 35.4, 58.3)),
            ("ViTSeg (PC)", (0.3, 38.9, 51.2, 74.4)),
            ("MDETR", (None, 53.7, None, None)),
            ("HulaNet", (None, 41.3, 50.8, None)),
            ("Mask-RCNN top", (None, 39.4, 47.4, None)),
            ("RMI", (None, 21.1, 42.5, None)),
        ),
        ("mIoU is the mean of per-sample IoU (the original code passes the sample index as the class).",),
    ),
    "4": PaperTable(
        "4",
        "Generalized zero-shot segmentation on Pascal-VOC",
        (
            Column("unseen-10 mIoU_S", "unseen-10/seen"),
            Column("unseen-10 mIoU_U", "unseen-10/unseen"),
            Column("unseen-4 mIoU_S", "unseen-4/seen"),
            Column("unseen-4 mIoU_U", "unseen-4/unseen"),
        ),
        (
            ("CLIPSeg (PC+)", (35.7, 43.1, 20.8, 47.3)),
            ("CLIP-Deconv (PC+)", (25.1, 36.7, 25.9, 41.9)),
            ("ViTSeg (PC+)", (4.2, 19.0, 6.0, 24.8)),
            ("SPNet", (59.0, 18.1, 67.3, 21.8)),
            ("ZS3Net", (33.9, 18.1, 66.4, 23.2)),
            ("CSRL", (59.2, 21.0, 69.8, 31.7)),
            ("CaGNet", (None, None, 69.5, 40.2)),
            ("OSR", (72.1, 33.9, 75.0, 44.1)),
            ("JoEm", (63.4, 22.5, 67.0, 33.4)),
        ),
        (
            "Seen classes include background. The paper trains one model per split (unseen classes removed from "
            "PhraseCut+); give them as per-task 'sources' (keys unseen-10, unseen-4).",
        ),
    ),
    "5": PaperTable(
        "5",
        "One-shot segmentation on Pascal-5i",
        _ONE_SHOT,
        (
            ("CLIPSeg (PC+)", (0.3, 59.5, 75.0, 82.3)),
            ("CLIPSeg (PC)", (0.3, 52.3, 69.5, 72.4)),
            ("CLIP-Deconv (PC+)", (0.2, 48.0, 65.8, 68.0)),
            ("ViTSeg (PC+)", (0.2, 39.0, 59.0, 62.4)),
            ("PPNet (RN50)", (None, 52.8, 69.2, None)),
            ("RePRI (RN50)", (None, 59.7, None, None)),
            ("PFENet (RN50)", (None, 60.2, 73.3, None)),
            ("HSNet (RN50)", (None, 64.0, 76.7, None)),
            ("PPNet (RN101)", (None, 55.2, 70.9, None)),
            ("RePRI (RN101)", (None, 59.4, None, None)),
            ("PFENet (RN101)", (None, 59.6, 72.9, None)),
            ("HSNet (RN101)", (None, 66.2, 77.6, None)),
        ),
        (
            "Metrics per fold (mIoU over the fold's 5 classes), averaged over the 4 folds.",
            "The paper's ViTSeg (PC+) row repeats its text-prompt scores of Table 7 (the released Tables notebook "
            "reads the text-prompt columns for it).",
        ),
    ),
    "6": PaperTable(
        "6",
        "One-shot segmentation on COCO-20i",
        _ONE_SHOT,
        (
            ("CLIPSeg (COCO)", (0.1, 33.2, 58.4, 40.5)),
            ("CLIPSeg (COCO+N)", (0.1, 33.3, 59.1, 41.7)),
            ("CLIP-Deconv (COCO+N)", (0.1, 29.8, 56.8, 40.8)),
            ("ViTSeg (COCO)", (0.1, 14.4, 46.1, 15.7)),
            ("PPNet (RN50)", (None, 29.0, None, None)),
            ("RePRI (RN50)", (None, 34.0, None, None)),
            ("PFENet (RN50)", (None, 35.8, None, None)),
            ("HSNet (RN50)", (None, 39.2, 68.2, None)),
            ("HSNet (RN101)", (None, 41.2, 69.1, None)),
        ),
        (
            "Metrics per fold (mIoU over the fold's 20 classes), averaged over the 4 folds; the paper trains one model "
            "per fold on COCO (give per-fold 'sources').",
        ),
    ),
    "7": PaperTable(
        "7",
        "Zero-shot segmentation on Pascal-5i (one-shot protocol, class name as text prompt)",
        _ONE_SHOT,
        (
            ("CLIPSeg (PC+)", (0.3, 72.4, 83.1, 93.5)),
            ("CLIPSeg (PC)", (0.3, 70.3, 81.6, 84.8)),
            ("CLIP-Deconv (PC+)", (0.3, 63.2, 77.3, 85.3)),
            ("ViTSeg (PC+)", (0.2, 39.0, 59.0, 62.4)),
            ("LSeg (ViT CLIP)", (None, 52.3, None, None)),
            ("PFENet (VGG16)", (None, 54.2, 67.0, None)),
        ),
    ),
    "8": PaperTable(
        "8",
        "Generalized prompts on LVIS (best threshold per model)",
        (
            Column("Affordances mIoU", "affordances/fgiou@best"),
            Column("Affordances AP", "affordances/ap"),
            Column("Attributes mIoU", "attributes/fgiou@best"),
            Column("Attributes AP", "attributes/ap"),
            Column("Meronymy mIoU", "meronymy/fgiou@best"),
            Column("Meronymy AP", "meronymy/ap"),
        ),
        (
            ("CLIPSeg (PC+)", (36.9, 50.5, 26.6, 43.0, 25.7, 29.0)),
            ("CLIPSeg (LVIS)", (37.7, 44.6, 18.4, 16.6, 18.9, 13.8)),
            ("CLIP-Deconv", (32.2, 43.7, 23.1, 35.6, 21.1, 27.1)),
            ("VITSeg (PC+)", (19.2, 23.5, 26.8, 28.0, 18.4, 15.9)),
        ),
        (
            "The paper's 'mIoU' columns are IoU_FG at the best threshold (the released notebook reads best_fgiou); the "
            "mean IoU over prompts is in results.json (key <group>/miou@best).",
        ),
    ),
    "9": PaperTable(
        "9",
        "Ablation study on PhraseCut (best threshold per model)",
        (
            Column("Text mIoU", "text/miou@best"),
            Column("Text AP", "text/ap"),
            Column("Visual mIoU", "visual/miou@best"),
            Column("Visual AP", "visual/ap"),
        ),
        (
            ("CLIPSeg (PC+)", (43.6, 76.7, 25.4, 55.6)),
            ("no CLIP pre-training", (13.1, 12.6, 12.7, None)),
            ("no visual", (46.4, 77.8, 14.4, 31.0)),
            ("D = 16", (37.4, 71.5, 24.7, 51.2)),
            ("only layer 3", (31.9, 64.9, 21.5, 48.6)),
            ("highlight mask", (43.4, 75.4, 23.3, 43.8)),
        ),
    ),
}


def paper_table(number: str) -> PaperTable:
    """The layout and published numbers of Table `number` (2-9)."""
    if number not in TABLES:
        raise ValueError(f"no paper table {number!r}; tables 2-9 are available")
    return TABLES[number]
