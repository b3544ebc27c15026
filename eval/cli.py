"""`plait-eval MODEL [--suites ...]` (also `python -m plait.eval`): score a saved model, a training checkpoint
or a training run on benchmark suites, offline, into one results JSON, a Markdown summary and PNG plots.

Suites: lm-eval tasks by name (Plait's offline copies: hellaswag, lambada_openai, arc_easy, arc_challenge,
piqa, winogrande, openbookqa, sciq, boolq, copa, sst2, rte, mrpc, mmlu; any lm-eval task with --hub-tasks),
`lm-eval` (all of those offline tasks), `perplexity` (strided sliding window on --text), `extrapolation`
(loss at 1x..16x the training length on --text), `image` (top-1/top-5 of an image classifier on
--image-data), and `standard` = hellaswag lambada_openai arc_easy arc_challenge piqa winogrande mmlu
perplexity extrapolation. Under `accelerate launch` the lm-eval requests are split across the processes
(data parallel); perplexity, extrapolation and image run whole on every process; rank 0 writes the results.

    plait-eval outputs/demo --suites standard --limit 100
    plait-eval runs/tiny --suites hellaswag perplexity --text default-corpus
    plait-eval my-vit --suites image --image-data fashion-mnist-test/
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .harness import LOCAL_TASKS

SUITES = ["perplexity", "extrapolation", "image"]
SHORTHANDS = {
    "lm-eval": LOCAL_TASKS,
    "standard": [
        "hellaswag",
        "lambada_openai",
        "arc_easy",
        "arc_challenge",
        "piqa",
        "winogrande",
        "mmlu",
        "perplexity",
        "extrapolation",
    ],
}
DTYPES = ["float32", "bfloat16", "float16"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _limit(text: str) -> int | float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of documents (or a fraction < 1)")
    return value if value < 1 else int(value)


def _variant(text: str) -> tuple[str, dict]:
    """NAME:key=value[,key=value...] (or key=value[,...], named after itself) -> (name, overrides)."""
    import yaml

    name, _, body = text.rpartition(":") if ":" in text else (text, "", text)
    overrides = {}
    for item in body.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise argparse.ArgumentTypeError(f"{text!r}: expected [NAME:]key=value[,key=value...]")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plait-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="saved model directory, training checkpoint, or training run directory")
    parser.add_argument(
        "--suites",
        nargs="+",
        default=["standard"],
        metavar="SUITE",
        help=f"suites and lm-eval tasks (default: standard); choices: {', '.join(all_choices())}",
    )
    parser.add_argument("--output-dir", type=Path, help="where results go (default: MODEL_DIR/eval)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: beside the model)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--batch-size", type=_positive_int, default=8)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    lm = parser.add_argument_group("lm-eval")
    lm.add_argument("--limit", type=_limit, help="documents per task (or a fraction of each task, < 1)")
    lm.add_argument("--num-fewshot", type=int, help="few-shot examples (default: each task's, 0 here)")
    lm.add_argument("--max-length", type=_positive_int, help="context window (default: the model's)")
    lm.add_argument("--bootstrap-iters", type=int, default=1000, help="bootstrap samples for non-mean stderr")
    lm.add_argument("--hub-tasks", action="store_true", help="lm-eval's built-in tasks (downloads data)")
    text = parser.add_argument_group("perplexity and extrapolation")
    text.add_argument(
        "--text",
        default="lambada",
        help="lambada, default-corpus, hf:NAME:CONFIG:SPLIT[:COLUMN], a save_to_disk folder, or files/glob",
    )
    text.add_argument("--max-documents", type=_positive_int, help="use only the first N documents of --text")
    text.add_argument(
        "--context-length", type=_positive_int, help="perplexity window (default: train length)"
    )
    text.add_argument("--stride", type=_positive_int, help="perplexity stride (default: context length / 2)")
    text.add_argument(
        "--train-length",
        type=_positive_int,
        help="training sequence length (default: the run's recipe.json, else max_position_embeddings)",
    )
    text.add_argument("--multiples", type=_positive_int, nargs="+", default=[1, 2, 4, 8, 16])
    text.add_argument("--windows", type=_positive_int, default=2, help="windows at the longest length")
    text.add_argument(
        "--variant",
        type=_variant,
        action="append",
        default=[],
        metavar="[NAME:]KEY=VALUE[,...]",
        help="also extrapolate the same weights under these config overrides, e.g. attention=lssar",
    )
    image = parser.add_argument_group("image")
    image.add_argument("--image-data", help="save_to_disk folder, image folder, or hf:NAME:CONFIG:SPLIT")
    image.add_argument("--image-split", default="test", help="split of a DatasetDict (default: test)")
    image.add_argument("--image-column", default="image")
    image.add_argument("--label-column", default="label")
    return parser


def all_choices() -> list[str]:
    return [*SHORTHANDS, *SUITES, *LOCAL_TASKS]


def expand_suites(names: list[str], hub: bool) -> tuple[list[str], list[str]]:
    """(lm-eval tasks, other suites) in the order given; unknown names raise ValueError with the choices.
    With `hub`, any other name is taken as an lm-eval task (lm-eval checks it)."""
    tasks, suites = [], []
    for name in names:
        for item in SHORTHANDS.get(name, [name]):
            if item in SUITES:
                suites.append(item)
            elif item in LOCAL_TASKS or hub:
                tasks.append(item)
            else:
                raise ValueError(f"unknown suite {item!r}; valid choices: {', '.join(all_choices())}")
    return list(dict.fromkeys(tasks)), list(dict.fromkeys(suites))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        tasks, suites = expand_suites(args.suites, args.hub_tasks)
    except ValueError as e:
        parser.error(str(e))
    if "image" in suites and not args.image_data:
        parser.error("the image suite needs --image-data")
    from .runner import evaluate

    try:
        results, written = evaluate(args, tasks, suites)
    except (OSError, ValueError) as e:  # missing/unreadable paths (transformers raises OSError), bad values
        print(f"plait-eval: error: {e}", file=sys.stderr)
        return 2
    if written:  # the main process (under `accelerate launch`, the others only lend their device)
        print(written["summary"].read_text())
        print(f"plait-eval: results in {written['results']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
