"""The evaluation a training run performs every `eval.every` steps (`plait.train.trainer`): perplexity on
held-out text and, optionally, a few lm-eval tasks with a document limit — the same functions `plait-eval`
runs, so numbers logged during training and numbers from `plait-eval` on the checkpoint agree."""

from __future__ import annotations

from .harness import lm_eval_suite
from .perplexity import sliding_window_perplexity, token_stream
from .report import HEADLINE


def periodic_evaluation(
    model,
    tokenizer,
    texts: list[str],
    seq_len: int,
    tasks: list[str] | tuple[str, ...] = (),
    limit: int | None = 100,
    batch_size: int = 8,
) -> dict[str, float]:
    """{"loss", "perplexity", "<task>/<metric>"}: loss on `texts` in disjoint windows of the training length
    `seq_len`, and each task's headline metric (acc_norm where lm-eval reports it, else acc)."""
    was_training = model.training
    ids = token_stream(tokenizer, texts)
    scored = sliding_window_perplexity(model, ids, seq_len, batch_size=batch_size, progress=False)
    metrics = {"loss": scored["loss"], "perplexity": scored["perplexity"]}
    if tasks:
        results = lm_eval_suite(model, tokenizer, list(tasks), limit=limit, batch_size=batch_size)
        for name, values in {**results["tasks"], **results["groups"]}.items():
            if name in tasks:
                metric = HEADLINE.get(name, "acc")
                metrics[f"{name}/{metric}"] = values[metric]
    model.train(was_training)
    return metrics
