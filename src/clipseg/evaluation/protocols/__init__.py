"""The benchmark protocols of the paper's Tables 2-9, one module per table, in one registry (`PROTOCOLS`).

- `phrasecut`: PhraseCut, text and visual prompts (Tables 3, 9).
- `pascal_zeroshot`: Pascal-VOC generalized zero-shot (Table 4).
- `one_shot`: Pascal-5i (Tables 5, 7) and COCO-20i (Table 6) HSNet episodes.
- `lvis_generalized`: LVIS generalized prompts (Table 8).
- `visual_prompt_engineering`: ΔP of CLIP with highlighted objects (Table 2).
- `own_data`: the user's own labelled images (`clipseg eval --data`), with its own report.
- `base`: the abstract `EvaluationProtocol`, option parsing and the registry.
"""

from . import lvis_generalized, one_shot, own_data, pascal_zeroshot, phrasecut, visual_prompt_engineering
from .base import PROTOCOLS, EvaluationProtocol, make_protocol

__all__ = [
    "PROTOCOLS",
    "EvaluationProtocol",
    "make_protocol",
    "lvis_generalized",
    "one_shot",
    "own_data",
    "pascal_zeroshot",
    "phrasecut",
    "visual_prompt_engineering",
]
