"""Plait evaluation: `plait-eval` and the functions behind it.

- `harness.lm_eval_suite`: lm-evaluation-harness tasks on an in-memory model (offline task YAMLs in `tasks/`
  reading the data cache, `task_docs` builds their documents);
- `perplexity.sliding_window_perplexity` / `evaluate_loss`: perplexity on any text (`texts.load_texts`);
- `extrapolation.length_extrapolation`: loss at 1x..16x the training length, variants by config;
- `image.image_classification`: top-1/top-5, per-class accuracy, confusion matrix;
- `runner` / `report` / `cli`: the `plait-eval` command (results JSON, Markdown summary, PNG plots).
"""
