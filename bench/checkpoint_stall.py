"""How long training stops for a checkpoint, per engine (DDP, FSDP2, DeepSpeed ZeRO-3), 2 processes.

Each engine runs the real launch path (`accelerate launch --config_file launch/accelerate/<engine>.yaml
--num_processes 2`) on the `small` shape (125M parameters; short sequences so a step takes seconds on CPU)
with a checkpoint every 2 steps. A callback on rank 0 times the gap between the end of one step and the
start of the next: after a checkpoint step it holds the save, after the others only the logging. The stall
is the mean gap after checkpoint steps minus the mean gap after the others. FSDP2 runs twice: with the
synchronous save (`checkpoint.async_save=false`) and with the background write (the default), where the
stall is the staging copy, and the steps that run while a write is in flight (`.staging/` exists when they
begin) are timed apart, since they share the machine with the writer.

    python bench/checkpoint_stall.py --out bench/results/checkpoint_stall_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import accelerate
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
# name -> (launcher config, extra recipe overrides)
ENGINES = {
    "ddp": ("ddp.yaml", []),
    "fsdp2": ("fsdp.yaml", ["checkpoint.async_save=false"]),
    "fsdp2_async": ("fsdp.yaml", ["checkpoint.async_save=true"]),
    "zero3": ("zero3.yaml", []),
}
MAX_STEPS, EVERY = 7, 2
OVERRIDES = [
    "data.seq_len=64",
    "train.micro_batch_size=1",
    "train.precision=fp32",
    "data.max_documents=40",
    "data.tokenizer_train_documents=40",
    "data.num_proc=null",
    "optim.warmup_steps=1",
    f"train.max_steps={MAX_STEPS}",
    f"checkpoint.every={EVERY}",
    "checkpoint.keep_last=1",
    "checkpoint.save_final=false",
    "logging.every=1",
    "logging.diagnostics_every=0",
    "logging.progress_bar=false",
]

# Runs plait-train with a callback timing the gap between the end of a step and the start of the next.
DRIVER = """
import json, os, sys, time
from transformers import TrainerCallback
from plait.train import cli, trainer

class Gaps(TrainerCallback):
    def __init__(self):
        self.end, self.gaps, self.steps, self.writing = None, {}, {}, {}
    def on_step_begin(self, args, state, control, **kwargs):
        self.begin = time.perf_counter()
        if self.end is not None:
            self.gaps[state.global_step] = self.begin - self.end
        self.writing[state.global_step + 1] = os.path.exists(os.path.join(args.output_dir, ".staging"))
    def on_step_end(self, args, state, control, **kwargs):
        self.end = time.perf_counter()
        self.steps[state.global_step] = self.end - self.begin
    def on_train_end(self, args, state, control, **kwargs):
        if args.process_index == 0:
            with open(os.environ["STALL_OUT"], "w") as f:
                json.dump({"gaps": self.gaps, "steps": self.steps, "writing": self.writing}, f)

train = trainer.run
trainer.run = lambda recipe: train(recipe, callbacks=[Gaps()])
sys.exit(cli.main())
"""


def measure(engine: str, work: Path) -> dict:
    out, timings = work / engine, work / f"{engine}.json"
    driver = work / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    config, overrides = ENGINES[engine]
    cmd += [
        str(ROOT / "launch/accelerate" / config),
        "--num_processes",
        "2",
        "--main_process_port",
        "0",
    ]
    cmd += [str(driver), "small", "--set", f"train.output_dir={out}"]
    cmd += [arg for o in OVERRIDES + overrides for arg in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "STALL_OUT": str(timings)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    measured = json.loads(timings.read_text())
    gaps = {int(step): gap for step, gap in measured["gaps"].items()}  # step -> gap after that step
    after_save = [gap for step, gap in gaps.items() if step % EVERY == 0]
    after_log = [gap for step, gap in gaps.items() if step % EVERY]
    steps = {int(step): seconds for step, seconds in measured["steps"].items()}
    overlapped = [seconds for step, seconds in steps.items() if measured["writing"][str(step)]]
    return {
        "stall_s": statistics.mean(after_save) - statistics.mean(after_log),
        "gap_after_checkpoint_s": after_save,
        "gap_after_other_steps_s": after_log,
        "step_s_median": statistics.median(steps.values()),
        "steps_during_a_write": len(overlapped),
        "step_s_during_a_write_median": statistics.median(overlapped) if overlapped else None,
        "checkpoint_mb": round(
            sum(f.stat().st_size for f in out.rglob("checkpoint-*/**/*") if f.is_file()) / 1e6
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/checkpoint_stall_cpu.json")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines:
            results[engine] = measure(engine, Path(tmp))
            print(engine, json.dumps(results[engine]), flush=True)
    report = {
        "what": "seconds training stops for a checkpoint: mean gap after checkpoint steps minus after others",
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs (noisy timings)",
        "processes": 2,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "accelerate": accelerate.__version__,
        },
        "shape": {"recipe": "small", "overrides": OVERRIDES},
        "save": {
            "ddp, zero3, fsdp2": "synchronous (Trainer's own save path, staged and renamed by "
            "plait.train.checkpointing)",
            "fsdp2_async": "model and optimizer shards written in the background "
            "(plait.train.async_checkpoint)",
        },
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
