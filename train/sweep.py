"""`plait-sweep SWEEP.yaml`: variants × seeds (× sizes) of one base recipe, run and compared.

Each planned run (`plait.train.sweep_spec`) trains in its own directory, `<output_dir>/[size<s>/]<variant>/
seed<seed>`, through the ordinary training path (`plait.train.trainer.run`, checkpoints and resume included).
Locally the runs go one after the other; `--emit commands` or `--emit slurm` instead writes one
`plait-train` command per unfinished run (and a SLURM array script) for a cluster, after which `--report`
collects what finished. A finished run is never trained again, an interrupted one resumes from its last
checkpoint, and a failed one is reported and left out of the statistics (it is retried on the next run).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from .lifecycle import one_warning_each
from .recipe import Recipe, RecipeError
from .sweep_spec import PlannedRun, Sweep, load_sweep, plan

HISTORY = "log_history.json"  # written by the trainer when a run ends
ERROR = "sweep_error.txt"  # why the run failed (local runs)
EXTRAS = "sweep_run.json"  # wall seconds and peak CUDA memory of a local run


def default_train(recipe: Recipe) -> None:
    """One run through `plait.train.trainer.run`, as `plait-train` does."""
    from .run_dir import AlreadyFinished
    from .trainer import run

    try:
        run(recipe)
    except AlreadyFinished:
        pass


def history(run: PlannedRun) -> list[dict[str, Any]] | None:
    """The run's log history if it trained to the end, else None."""
    try:
        entries = json.loads((run.run_dir / HISTORY).read_text())
    except (OSError, ValueError):
        return None
    steps = [e["step"] for e in entries if isinstance(e, dict) and "step" in e]
    return entries if steps and max(steps) >= run.recipe.train.max_steps else None


def status(run: PlannedRun) -> str:
    """finished, failed (it raised, see its sweep_error.txt), unfinished (started: a crash or a cluster job
    still running) or pending."""
    if history(run) is not None:
        return "finished"
    if (run.run_dir / ERROR).is_file():
        return "failed"
    return "unfinished" if run.run_dir.is_dir() else "pending"


def train_runs(runs: list[PlannedRun], train: Callable[[Recipe], None] = default_train) -> None:
    """Train every run not finished yet, one after the other; a run that raises is recorded and skipped."""
    for i, run in enumerate(runs, 1):
        if history(run) is not None:
            print(f"plait-sweep: [{i}/{len(runs)}] {run.id}: finished, skipped", flush=True)
            continue
        print(f"plait-sweep: [{i}/{len(runs)}] {run.id}: training", flush=True)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / ERROR).unlink(missing_ok=True)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            train(run.recipe)
        except Exception as e:  # noqa: BLE001  (any failure of one run: reported, the sweep goes on)
            message = f"{type(e).__name__}: {e}"
            (run.run_dir / ERROR).write_text(message + "\n\n" + traceback.format_exc())
            print(f"plait-sweep: {run.id} FAILED: {message.splitlines()[0]}", file=sys.stderr, flush=True)
            continue
        extras = {"wall_seconds": time.perf_counter() - start}
        if torch.cuda.is_available():
            extras["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        (run.run_dir / EXTRAS).write_text(json.dumps(extras))


def emit(sweep: Sweep, runs: list[PlannedRun], launcher: str, slurm: bool) -> Path:
    """Write each unfinished run's recipe and one `<launcher> <recipe>` line per run to
    `<output_dir>/commands.txt` (plus `sweep.sbatch`, a SLURM array over those lines); returns the file."""
    out = Path(sweep.spec.output_dir)
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    lines = []
    for run in runs:
        if history(run) is not None:
            continue
        path = out / "recipes" / (run.id.replace("/", "__") + ".yaml")
        path.write_text(yaml.safe_dump(run.recipe.to_dict(), sort_keys=False))
        lines.append(f"{launcher} {shlex.quote(str(path))}")
    commands = out / "commands.txt"
    commands.write_text("".join(line + "\n" for line in lines))
    if not slurm:
        return commands
    script = out / "sweep.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --job-name={sweep.name}\n"
        f"#SBATCH --array=0-{max(0, len(lines) - 1)}\n"
        f"#SBATCH --output={out}/slurm-%A_%a.out\n"
        "# add your cluster's resource lines (--gres, --cpus-per-task, --time, --partition) here\n"
        "set -euo pipefail\n"
        f'eval "$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(commands))})"\n'
    )
    return script


def collect(runs: list[PlannedRun]) -> list[dict[str, Any]]:
    """Each run's status and, when finished, its log history and extras (wall time, peak memory)."""
    results = []
    for run in runs:
        state = status(run)
        entry = {
            "id": run.id,
            "size": run.size,
            "variant": run.variant,
            "seed": run.seed,
            "status": state,
            "parameters": run.parameters,
            "training_flops": run.training_flops,
            "tokens": run.tokens,
            "matched": run.matched,
            "history": history(run) or [],
        }
        if state == "failed":
            entry["error"] = (run.run_dir / ERROR).read_text().split("\n\n")[0]
        if (run.run_dir / EXTRAS).is_file():
            entry["extras"] = json.loads((run.run_dir / EXTRAS).read_text())
        results.append(entry)
    return results


def run_sweep(
    path: str | Path, train: Callable[[Recipe], None] | None = default_train, report: bool = True
) -> dict[str, Any]:
    """Plan the sweep, train its unfinished runs (none when `train` is None), and write its report; returns
    the report's summary (`plait.train.sweep_report.summarize`)."""
    sweep = load_sweep(path)
    runs = plan(sweep)
    if train is not None:
        train_runs(runs, train)
    return report_sweep(sweep, runs, write=report)


def report_sweep(sweep: Sweep, runs: list[PlannedRun], write: bool = True) -> dict[str, Any]:
    """Collect the runs and summarise them; `write`: also the report files at the sweep's report prefix."""
    from .sweep_report import summarize, write_report

    summary = summarize(sweep, collect(runs))
    if write:
        write_report(summary, sweep.report_prefix)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plait-sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="the sweep YAML file")
    parser.add_argument(
        "--emit",
        choices=["commands", "slurm"],
        help="write the unfinished runs' commands (and a SLURM array script) instead of training",
    )
    parser.add_argument("--launcher", default="plait-train", help="command prefix of emitted runs")
    parser.add_argument("--report", action="store_true", help="only collect finished runs and report")
    parser.add_argument("--plan", action="store_true", help="print the planned runs and exit")
    args = parser.parse_args(argv)
    one_warning_each()
    try:
        sweep = load_sweep(args.sweep)
        runs = plan(sweep)
        if args.plan:
            for run in runs:
                line = (
                    f"{run.id}: {run.parameters:,} parameters, {run.training_flops:.3g} FLOPs, {status(run)}"
                )
                if run.matched:
                    m = run.matched
                    line += f" ({m['width']}={m['value']}, {m['deviation']:+.2%} {m['by']})"
                print(line)
            return 0
        if args.emit:
            written = emit(sweep, runs, args.launcher, args.emit == "slurm")
            print(f"plait-sweep: wrote {written}")
            return 0
        if not args.report:
            train_runs(runs)
        summary = report_sweep(sweep, runs)
    except RecipeError as e:
        print(f"plait-sweep: error: {e}", file=sys.stderr)
        return 2
    print(f"plait-sweep: report in {sweep.report_prefix}.md and .json")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
