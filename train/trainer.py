"""`run(recipe)`: training on transformers' `Trainer`, under Accelerate DDP/FSDP or DeepSpeed ZeRO 1/2/3.

The engine is not part of the recipe: it comes from how the process is started. `accelerate launch
--config_file launch/accelerate/<engine>.yaml -m plait.train <recipe>` sets the distributed type (DDP, FSDP or
DeepSpeed with a JSON from `launch/deepspeed/`), and `Trainer` picks it up from Accelerate's state; a plain
`plait-train <recipe>` trains in one process.

The recipe's `model.arch` picks a task (`plait.train.tasks`) that supplies the model, the data, the collator
and the metrics; the trainer knows no particular model. What Plait adds to `Trainer`:

- atomic checkpoints and keep-last-K rotation (`plait.train.checkpointing`);
- weight-decay groups by Plait's one rule (`plait.modeling.weight_decay`): only parameters of two or more
  dimensions decay, minus any the model names in `no_weight_decay()`;
- throughput metrics in every log line: tokens/s, samples/s, achieved TFLOPs per device and MFU, plus the
  hyper-connection composite gain (`plait.train.metrics`);
- periodic evaluation (`eval.every`) of what the task holds out: for the LM, `plait.eval.periodic` on
  held-out text and lm-eval tasks, logged as `eval_*` (every rank runs the same evaluation, so sharded models
  stay in step); for the ViT, `Trainer`'s loop with the task's metrics (test top-1), also after training.

Resume (`checkpoint.resume: auto`) uses `Trainer`'s own restore: model, optimizer, scheduler, scaler, the
Python/NumPy/torch RNG states and the data position (it skips the batches already consumed).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from plait.eval.periodic import periodic_evaluation
from plait.modeling.weight_decay import decay_parameter_names

from . import async_checkpoint
from .checkpointing import STAGING_DIR, AtomicCheckpoints
from .diagnostics import Diagnostics, plot
from .engine import describe_engine, enable_fsdp2_on_cpu, refuse_fsdp1_on_cpu
from .errors import RunError
from .hangs import Heartbeat, set_collective_timeout
from .lifecycle import exit_with_parent, launched_worker
from .metrics import Clock, composite_gain, device_name, flops_per_token, peak_tflops  # noqa: F401  (API)
from .preemption import Preemption
from .recipe import Recipe, RecipeError
from .restart_store import namespace_by_restart
from .restarts import RestartLog
from .run_dir import DirectoryLock, prepare
from .stability import SkipSteps, SpikeRule
from .tasks import build_task


class PlaitTrainer(AtomicCheckpoints, SkipSteps, Trainer):
    """`Trainer` with atomic checkpoints, the skip-step rule, Plait's weight-decay rule and throughput/MFU
    logging."""

    def __init__(
        self,
        *args,
        keep_last: int | None = None,
        tokens_per_step: int = 0,
        seq_len: int = 0,
        peak: float | None = None,
        evaluation: dict[str, Any] | None = None,
        log_sources: tuple[Any, ...] = (),
        spike_rule: SpikeRule | None = None,
        async_save: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if async_save and async_checkpoint.applies(self):  # FSDP2 shards, written while training goes on
            self.background = async_checkpoint.AsyncShardedSave(self.args.ddp_timeout)
        self.spike_rule = spike_rule
        self.evaluation = evaluation  # periodic_evaluation's settings (eval_dataset holds the texts), or None
        self.keep_last = keep_last
        self.tokens_per_step = tokens_per_step
        self.seq_len = seq_len
        self.peak = peak
        self.flops_token = flops_per_token(self.model, seq_len)
        self.clock = Clock()
        self.add_callback(self.clock)
        self.probe: torch.Tensor | None = None  # one training example, to log the HC composite gain on
        self.last_finite: dict[str, float] = {}  # the last logged step whose loss and grad norm were finite
        self.log_sources = list(log_sources)  # objects whose `metrics()` join every training log line

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if enable_fsdp2_on_cpu(self.accelerator):  # FSDP2 on a CPU launch (plait.train.engine)
            self.is_fsdp_enabled = True

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.probe = inputs[self.accelerator.unwrap_model(model).main_input_name][:1].detach()
        if "input_ids" in inputs:  # text: the tokens that run, padding to the batch's longest included
            self.clock.count(inputs["input_ids"].numel())
        return super().training_step(model, inputs, num_items_in_batch)

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        # Before a log line or a checkpoint: a non-finite loss (summed since the last log) or gradient norm
        # stops the run, so NaN weights are never saved over the last good checkpoint nor logged as a loss.
        if self.control.should_log or self.control.should_save:
            self._stop_if_not_finite(tr_loss, grad_norm)
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def _stop_if_not_finite(self, tr_loss: torch.Tensor, grad_norm) -> None:
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: the norm of sharded gradients is a DTensor
            grad_norm = grad_norm.full_tensor()
        norm = torch.as_tensor(0.0 if grad_norm is None else grad_norm, dtype=torch.float32)
        values = torch.stack([tr_loss.detach().float().reshape(()), norm.to(tr_loss.device).reshape(())])
        values = self.accelerator.gather(values).view(-1, 2)  # every rank stops alike
        if torch.isfinite(values).all():
            return
        what = " and ".join(
            name
            for name, column in (("loss", 0), ("gradient norm", 1))
            if not torch.isfinite(values[:, column]).all()
        )
        last = self.last_finite
        since = f"last finite at step {last['step']}: {last}" if last else "no finite value was logged yet"
        raise RunError(
            f"training diverged: non-finite {what} at step {self.state.global_step} ({since}); nothing was "
            "saved from this step. Lower optim.lr, raise optim.warmup_steps or set optim.max_grad_norm, then "
            "resume from the last checkpoint."
        )

    def _stop_if_weights_not_finite(self, model: torch.nn.Module) -> None:
        local = [  # this rank's part only: FSDP2's shard, ZeRO-3's partition
            p.to_local() if hasattr(p, "to_local") else getattr(p, "ds_tensor", p) for p in model.parameters()
        ]
        bad = torch.tensor([float(any(not torch.isfinite(p).all() for p in local if p.numel()))])
        if self.accelerator.gather(bad.to(self.accelerator.device)).any():
            raise RunError(
                f"training diverged: the weights hold non-finite values at step {self.state.global_step}; "
                "checkpoint not saved (the previous one is kept)"
            )

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Plait's text evaluation (`plait.eval.periodic`) when the task asks for it, else `Trainer`'s loop
        with the task's `compute_metrics`."""
        if self.evaluation is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        texts = (eval_dataset or self.eval_dataset)["text"]
        model = self.accelerator.unwrap_model(self.model)
        scored = periodic_evaluation(model, self.processing_class, list(texts), **self.evaluation)
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in scored.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if getattr(dataset, "in_order", False):  # the dataset's own global order (plait.train.mixture)
            return torch.utils.data.SequentialSampler(dataset)
        return super()._get_train_sampler(train_dataset)

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        return decay_parameter_names(model)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            throughput = self.clock.throughput(
                self.state.global_step, self.tokens_per_step, max(1, self.seq_len), self.args.world_size
            )
            if throughput:
                tflops = throughput["tokens_per_s"] * self.flops_token / self.args.world_size / 1e12
                logs.update(throughput, tflops_per_device=tflops)
                if self.peak:
                    logs["mfu"] = tflops / self.peak
            consumed = getattr(self.train_dataset, "tokens_consumed", None)
            if consumed is not None:  # per-source tokens of a mixture
                logs.update(consumed(self.state.global_step * self.tokens_per_step // max(1, self.seq_len)))
            if self.clock.mark is not None:
                logs.update(composite_gain(self.accelerator.unwrap_model(self.model), self.probe))
            for source in self.log_sources:
                logs.update(source.metrics())
            self.last_finite = {
                "step": self.state.global_step,
                "loss": logs["loss"],
                **({"grad_norm": logs["grad_norm"]} if "grad_norm" in logs else {}),
            }
        super().log(logs, start_time)

    def save_final(self, output_dir: Path) -> None:
        """The model in `from_pretrained` form, gathered whole from every engine's shards. ZeRO-3 gathers in
        `save_model` (stage3_gather_16bit_weights_on_model_save); for FSDP with sharded checkpoints
        `save_model` writes no weights at all (transformers leaves merging to `accelerate merge-weights`),
        so the full state dict is gathered here, on every rank, and written by the main process."""
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if self.is_fsdp_enabled and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
            self._save(str(output_dir), state_dict=self.accelerator.get_state_dict(self.model))
        else:
            self.save_model(str(output_dir))

    def _save_checkpoint(self, model, trial) -> None:
        """Weights that are not all finite are never saved: the run stops with the last good checkpoint
        kept. Otherwise the atomic save of `AtomicCheckpoints`."""
        self._stop_if_weights_not_finite(model)
        super()._save_checkpoint(model, trial)


def _scheduler(recipe: Recipe) -> tuple[str, dict[str, Any]]:
    optim, steps = recipe.optim, recipe.train.max_steps
    if optim.schedule == "cosine":
        return "cosine_with_min_lr", {"min_lr_rate": optim.min_lr_ratio}
    if optim.schedule == "wsd":
        decay = max(1, round(optim.decay_fraction * steps))
        if optim.warmup_steps + decay > steps:
            raise RecipeError(
                f"optim.warmup_steps={optim.warmup_steps} plus the wsd decay ({decay} steps = "
                f"optim.decay_fraction={optim.decay_fraction} of train.max_steps={steps}) "
                "exceeds train.max_steps"
            )
        return "warmup_stable_decay", {
            "num_decay_steps": decay,
            "min_lr_ratio": optim.min_lr_ratio,
            "decay_type": "cosine",
        }
    if optim.schedule == "linear":
        return "linear", {}
    return "constant_with_warmup", {}


def training_arguments(recipe: Recipe) -> TrainingArguments:
    t, o, c, lg = recipe.train, recipe.optim, recipe.checkpoint, recipe.logging
    scheduler, scheduler_kwargs = _scheduler(recipe)
    report_to = ["wandb"] if lg.wandb else []
    if t.precision == "fp16" and not torch.cuda.is_available():
        raise RecipeError("train.precision='fp16' needs a GPU; use 'bf16' or 'fp32' on CPU")
    set_collective_timeout(t.collective_timeout)
    return TrainingArguments(
        output_dir=t.output_dir,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.beta1,
        adam_beta2=o.beta2,
        adam_epsilon=o.eps,
        max_grad_norm=o.max_grad_norm,
        lr_scheduler_type=scheduler,
        lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=o.warmup_steps,
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        seed=t.seed,
        data_seed=t.seed,
        activation_checkpointing=t.activation_checkpointing,
        torch_compile=t.compile,
        logging_steps=lg.every,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a non-finite loss stops the run (PlaitTrainer), never logs as 0
        save_strategy="steps" if c.every else "no",
        save_steps=c.every or 1,
        eval_strategy="steps" if recipe.eval.every else "no",
        eval_steps=recipe.eval.every or None,
        per_device_eval_batch_size=recipe.eval.batch_size,
        report_to=report_to,
        run_name=lg.run_name,
        disable_tqdm=not lg.progress_bar,
        dataloader_num_workers=t.dataloader_workers,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
        deepspeed=recipe.engine.deepspeed,
        ddp_timeout=t.collective_timeout,
    )


def _deepspeed_cpu_without_shm() -> None:
    """DeepSpeed on CPU: collectives go through gloo. DeepSpeed would first JIT-compile a shared-memory
    all-reduce extension (minutes of C++ build on first use, and it needs a compiler); skip it."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


@dataclass
class RunResult:
    output_dir: Path
    final_dir: Path | None
    log_history: list[dict[str, Any]]
    trainer: PlaitTrainer


def run(recipe: Recipe, callbacks: list[TrainerCallback] | None = None) -> RunResult:
    """Train as the recipe says; returns the final model directory and the log history."""
    if recipe.logging.wandb:
        os.environ.setdefault("WANDB_PROJECT", recipe.logging.wandb_project)
        os.environ.setdefault("WANDB_DIR", recipe.train.output_dir)
        if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"
    deepspeed = recipe.engine.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    if deepspeed and not torch.cuda.is_available():
        _deepspeed_cpu_without_shm()
    if launched_worker():
        exit_with_parent()
        namespace_by_restart()
    refuse_fsdp1_on_cpu()
    args = training_arguments(recipe)
    output_dir = Path(recipe.train.output_dir)
    lock = DirectoryLock(output_dir)
    try:
        resume = _prepare_output_dir(recipe, args, lock)
        return _train(recipe, args, resume, callbacks)
    finally:
        lock.release()


def _prepare_output_dir(recipe: Recipe, args: TrainingArguments, lock: DirectoryLock) -> str | None:
    """The main process locks and checks the output directory (`run_dir.prepare`); every rank gets its
    verdict: the checkpoint to resume from, or the error."""
    verdict: tuple[str | None, Exception | None] = (None, None)
    if args.should_save:
        try:
            verdict = (prepare(recipe, lock), None)
            shutil.rmtree(Path(recipe.train.output_dir) / STAGING_DIR, ignore_errors=True)  # a crashed save
        except (RunError, RecipeError) as e:
            verdict = (None, e)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shared = [verdict]
        torch.distributed.broadcast_object_list(shared, src=0)
        verdict = shared[0]
    resume, error = verdict
    if error is not None:
        raise error
    return resume


def _train(recipe: Recipe, args: TrainingArguments, resume: str | None, callbacks) -> RunResult:
    output_dir = Path(recipe.train.output_dir)
    task = build_task(recipe, args)
    preemption, restarts = Preemption(args.device), RestartLog(output_dir)
    heartbeat = Heartbeat(recipe.train.collective_timeout)
    o = recipe.optim
    spike_rule = (
        SpikeRule(o.skip_step_sigmas, o.skip_step_window, o.skip_step_max_in_row) if o.skip_step else None
    )
    every = recipe.logging.diagnostics_every
    diagnostics = Diagnostics(recipe.logging.every if every is None else every) if every != 0 else None
    logged = [restarts, *(c for c in (spike_rule, diagnostics) if c)]  # what joins the log lines
    tokens_per_step = (
        recipe.train.micro_batch_size * recipe.train.grad_accum * args.world_size * task.tokens_per_sample
    )
    trainer = PlaitTrainer(
        model=task.model,
        args=args,
        train_dataset=task.train_dataset,
        eval_dataset=task.eval_dataset,
        data_collator=task.data_collator,
        processing_class=task.processing_class,
        compute_metrics=task.compute_metrics,
        callbacks=[*task.callbacks, heartbeat, preemption, *logged, *(callbacks or [])],
        log_sources=tuple(logged),
        spike_rule=spike_rule,
        evaluation=task.evaluation,
        keep_last=recipe.checkpoint.keep_last,
        async_save=recipe.checkpoint.async_save,
        tokens_per_step=tokens_per_step,
        seq_len=task.tokens_per_sample,
        peak=peak_tflops(recipe.train.precision, recipe.logging.peak_tflops),
    )

    engine = describe_engine(trainer.accelerator, recipe.train.precision)
    if trainer.background is not None:
        engine += ", checkpoints written in the background"
    if args.should_save:
        print(
            f"plait-train: {engine}; " + (f"resuming from {resume}" if resume else "fresh start"), flush=True
        )
    with heartbeat.named_on_timeout():
        trainer.train(resume_from_checkpoint=resume)
    preemption.raise_if_preempted(str(output_dir))
    step = trainer.state.global_step
    evaluated = any(e.get("step") == step and "eval_loss" in e for e in trainer.state.log_history)
    if task.evaluate_at_end and not evaluated:
        trainer.evaluate()  # the final model on the held-out split, logged into the history

    if args.should_save:  # the whole run's metrics, also for runs started by a launcher (bench, scripts)
        (output_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        if diagnostics is not None:
            plot(trainer.state.log_history, output_dir / "diagnostics.png")
    final_dir = None
    if recipe.checkpoint.save_final and trainer.state.global_step >= recipe.train.max_steps:
        final_dir = output_dir / "final"
        if task.prepare_for_saving is not None:
            task.prepare_for_saving(trainer.accelerator.unwrap_model(trainer.model))
        trainer.save_final(final_dir)
        if args.should_save:
            task.processing_class.save_pretrained(final_dir)  # the tokenizer or the image processor
    if recipe.logging.wandb:
        import wandb

        if wandb.run is not None:
            wandb.finish()  # flush and close the run (offline: its .wandb file is complete on return)
    trainer.accelerator.wait_for_everyone()
    return RunResult(output_dir, final_dir, trainer.state.log_history, trainer)


def losses(log_history: list[dict[str, Any]]) -> dict[int, float]:
    """Step -> logged training loss."""
    return {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry}
