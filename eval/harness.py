"""Benchmarks through lm-evaluation-harness's own API, on the in-memory model, offline by default.

    results = lm_eval_suite(model, tokenizer, ["hellaswag", "arc_easy"], limit=100)

The model goes in as it is (`HFLM(pretrained=model, tokenizer=tokenizer, backend="causal")`), so whatever was
trained or loaded is what gets scored; `simple_evaluate` runs the tasks. Offline, the tasks are Plait's YAMLs
in `plait/eval/tasks/` — lm-eval's own task definitions (prompts, metrics, lm-eval's prompt functions by
reference) reading the data cached by `make data` (see `plait.eval.task_docs`). `hub=True` uses lm-eval's
built-in tasks instead, which download their data sets.

Pitfalls handled here: the tokenizer object is passed (else HFLM fetches one from the hub by name); the batch
size is an integer (`"auto"` probes 64 x max_length, very slow on CPU); only Plait's folder is indexed
(lm-eval's ~14.7k built-in tasks take ~11 s to index); the YAMLs load their data through `custom_dataset`
functions, not `dataset_kwargs.data_files` (whose paths resolve against the working directory).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

LOCAL_TASKS_DIR = Path(__file__).parent / "tasks"
# Plait's offline tasks (MMLU is a group of lm-eval's 57 subject tasks, reported with its 4 categories).
LOCAL_TASKS = [
    "hellaswag",
    "lambada_openai",
    "arc_easy",
    "arc_challenge",
    "piqa",
    "winogrande",
    "openbookqa",
    "sciq",
    "boolq",
    "copa",
    "sst2",
    "rte",
    "mrpc",
    "mmlu",
]


class _DropCustomDatasetNotice(logging.Filter):
    """lm-eval logs a hint about `--metadata` for every task with a `custom_dataset` (57 times for MMLU)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


logging.getLogger("lm_eval.api.task").addFilter(_DropCustomDatasetNotice())


def task_manager(hub: bool = False):
    """lm-eval's `TaskManager` over Plait's offline task folder, or over lm-eval's built-in tasks (`hub`)."""
    from lm_eval.tasks import TaskManager

    if hub:
        return TaskManager()
    return TaskManager(include_path=str(LOCAL_TASKS_DIR), include_defaults=False)


def check_tasks(tasks: list[str], manager) -> None:
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        known = LOCAL_TASKS if manager.include_path else "lm-eval's task list (`lm-eval ls tasks`)"
        raise ValueError(f"unknown lm-eval task(s) {unknown}; valid choices: {known}")


def lm_eval_suite(
    model,
    tokenizer,
    tasks: list[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    seed: int = 1234,
    bootstrap_iters: int = 1000,
    hub: bool = False,
    samples: bool = False,
    manager=None,
) -> dict[str, Any]:
    """Score `model` on lm-eval `tasks`; returns {"tasks": {name: {metric: value, metric_stderr: value,
    "n_samples": n, ...}}, "groups": {...}, "group_subtasks": {group: [children]}, "configs": {name: task
    config}, "lm_eval": {version, settings}}; under `accelerate launch` the requests are split across the
    processes and rank 0 gets the results (the other ranks get {}).

    `limit` caps the documents per task (an int, or a fraction of each task when < 1). `max_length` is the
    context window lm-eval truncates to (default: the model's `max_position_embeddings`). `bootstrap_iters`
    sets the bootstrap samples for the stderr of non-mean metrics (e.g. F1, perplexity); mean metrics get
    their analytic stderr. `samples` adds lm-eval's per-document records (`"samples"`: the requests'
    arguments, the model's log-likelihoods and the per-document metrics).
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer ('auto' is very slow on CPU)")
    if limit is not None and not limit > 0:
        raise ValueError(f"limit={limit!r} must be positive (documents per task, or a fraction below 1)")
    manager = manager or task_manager(hub)
    check_tasks(tasks, manager)
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None)
    lm = HFLM(
        pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size, max_length=max_length
    )
    _data_parallel(lm)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=manager,
        num_fewshot=num_fewshot,
        limit=limit,
        bootstrap_iters=bootstrap_iters,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        log_samples=samples,
    )
    if out is None:  # a data-parallel rank other than 0: the results are gathered on rank 0
        return {}
    tasks_out = {name: _metrics(out, name) for name in out["results"] if name not in out.get("groups", {})}
    groups_out = {name: _metrics(out, name) for name in out.get("groups", {})}
    for name, metrics in groups_out.items():
        metrics["n_samples"] = _documents(name, out.get("group_subtasks", {}), tasks_out)
    return {
        "tasks": tasks_out,
        "groups": groups_out,
        "group_subtasks": out.get("group_subtasks", {}),
        "configs": {name: _jsonable(config) for name, config in out["configs"].items()},
        "lm_eval": {
            "version": lm_eval.__version__,
            "task_versions": out.get("versions", {}),
            "n_shot": out.get("n-shot", {}),
            "tasks_source": "lm-eval built-in (hub data)" if hub else str(LOCAL_TASKS_DIR),
            "limit": limit,
            "batch_size": batch_size,
            "max_length": max_length,
            "seed": seed,
            "bootstrap_iters": bootstrap_iters,
        },
        **({"samples": _jsonable(out["samples"])} if samples else {}),
    }


def _data_parallel(lm) -> None:
    """Under `accelerate launch` with several processes, split lm-eval's requests across them. HFLM does this
    only for models it loads by name; for an in-memory model it leaves the wiring to the caller (each
    process holds its own copy of the model on its own device)."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1:
        from accelerate import Accelerator

        lm.accelerator = Accelerator()
        lm._rank, lm._world_size = state.process_index, state.num_processes


def _metrics(out: dict, name: str) -> dict[str, Any]:
    """lm-eval's "acc,none" / "acc_stderr,none" keys as "acc" / "acc_stderr", plus the documents scored."""
    metrics: dict[str, Any] = {}
    for key, value in out["results"][name].items():
        if key in ("alias", "sample_len") or not isinstance(value, (int, float)):
            continue
        metric, _, filter_name = key.partition(",")
        metrics[metric if filter_name in ("", "none") else f"{metric},{filter_name}"] = (
            None if value == "N/A" else float(value)
        )
    samples = out.get("n-samples", {}).get(name)
    if samples:
        metrics["n_samples"] = samples["effective"]
    return metrics


def _documents(name: str, children: dict[str, list[str]], tasks: dict[str, dict]) -> int:
    """Documents scored under a group: the sum over its leaf tasks."""
    if name not in children:
        return tasks.get(name, {}).get("n_samples", 0)
    return sum(_documents(child, children, tasks) for child in children[name])


def _jsonable(value: Any) -> Any:
    """Task configs hold functions (`!function` entries); keep them as their qualified names."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    return value
