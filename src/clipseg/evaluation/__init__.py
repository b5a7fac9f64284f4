"""Metrics, benchmark protocols and reports of the paper.

- `clipseg.evaluation.metrics`: the paper's threshold metrics (IoU_FG, IoU_BIN, mIoU, Simpson AP) from streamed
  TP/FP/FN/TN counts at 49 fixed thresholds, and a confusion matrix for argmax segmentation.
- `clipseg.evaluation.protocols`: the protocols of Tables 2-9 (PhraseCut, Pascal-VOC zero-shot, Pascal-5i,
  COCO-20i, LVIS generalized prompts, visual prompt engineering), one module per table, one registry.
- `clipseg.evaluation.config`: an evaluation YAML -> `clipseg.evaluation.settings.EvalConfig`.
- `clipseg.evaluation.runner.run_evaluation`: one YAML config (``configs/eval/table*.yaml``) -> report.md,
  results.json and plots, resumable from cached per-sample results; `clipseg eval CONFIG.yaml` on the command line.

Nothing is imported here, so that the command line stays fast; import the submodules.
"""
