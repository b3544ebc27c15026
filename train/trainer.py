"""`run(recipe)`: pretraining on transformers' `Trainer`, under Accelerate DDP/FSDP or DeepSpeed ZeRO 1/2/3.

The engine is not part of the recipe: it comes from how the process is started. `accelerate launch
--config_file launch/accelerate/<engine>.yaml -m plait.train <recipe>` sets the distributed type (DDP, FSDP or
DeepSpeed with a JSON from `launch/deepspeed/`), and `Trainer` picks it up from Accelerate's state; a plain
`plait-train <recipe>` trains in one process.

What Plait adds to `Trainer`:

- atomic checkpoints: each checkpoint is written under `<output_dir>/.staging/` and renamed to
  `<output_dir>/checkpoint-<step>` only once every rank has finished writing, so a crash during a save never
  leaves a partial `checkpoint-*` behind (the previous one stays the latest); then keep-last-K rotation;
- weight-decay groups: only parameters of two or more dimensions decay, minus any the model names in
  `no_weight_decay()` (biases, norm gains and static hyper-connection parameters stay undecayed);
- throughput metrics in every log line: tokens/s, achieved TFLOPs per device and MFU (see `flops_per_token`),
  plus the hyper-connection composite gain when `plait.modeling.diagnostics` provides one;
- periodic evaluation (`eval.every`): `plait.eval.periodic` on held-out text and lm-eval tasks, logged as
  `eval_*` (every rank runs the same evaluation, so sharded models stay in step).

Resume (`checkpoint.resume: auto`) uses `Trainer`'s own restore: model, optimizer, scheduler, scaler, the
Python/NumPy/torch RNG states and the data position (it skips the batches already consumed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import (
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from plait.eval.periodic import periodic_evaluation
from plait.modeling.diagnostics import residual_mixing

from .data import build_lm_dataset, iter_texts, load_documents
from .errors import RunError
from .lifecycle import exit_with_parent, launched_worker
from .pretrained import load_pretrained
from .recipe import Recipe, RecipeError, model_config
from .run_dir import DirectoryLock, prepare

STAGING_DIR = ".staging"

# Dense (no sparsity) peak TFLOPs per device by precision; the first name contained in the device name wins.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 67.0}),
    ("B200", {"bf16": 2250.0, "fp16": 2250.0, "fp32": 80.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    ("A10G", {"bf16": 70.0, "fp16": 70.0, "fp32": 35.0}),
    ("RTX 4090", {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6}),
]


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


def peak_tflops(precision: str, override: float | None = None) -> float | None:
    """Per-device peak for MFU: the recipe's override, else the table entry for this device, else None."""
    if override is not None:
        return override
    name = device_name()
    for key, peaks in PEAK_TFLOPS:
        if key in name:
            return peaks[precision]
    return None


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6·N (forward + backward of every matmul weight, N excluding the input
    embedding table, which is a lookup) plus attention's 12·L·d_attn·T (PaLM, appendix B: scores and values,
    forward and backward, counted for the full T×T square)."""
    config = model.config
    embedding = model.get_input_embeddings()
    n = sum(_numel(p) for p in model.parameters())
    if not getattr(config, "tie_word_embeddings", False):
        n -= sum(_numel(p) for p in embedding.parameters())
    # Configs without layer_types / head_dim (BERT, fine-tuned any-transformers models): all attention.
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    attention_layers = sum(1 for t in layer_types if t == "full_attention")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    d_attn = config.num_attention_heads * head_dim
    return 6.0 * n + 12.0 * attention_layers * d_attn * seq_len


def _numel(p: torch.Tensor) -> int:
    return int(p.ds_numel) if hasattr(p, "ds_numel") else p.numel()  # ZeRO-3 partitions hold a placeholder


def composite_gain(model: torch.nn.Module, input_ids: torch.Tensor | None) -> dict[str, float]:
    """mHC's composite gain of the residual mixing on `input_ids` (`plait.modeling.diagnostics`): the max
    absolute row (forward) and column (backward) sums of the product of H_res over depth. Empty for a plain
    residual. Every rank runs it (a ZeRO-3 forward needs all ranks)."""
    if input_ids is None or getattr(model.config, "residual", "plain") == "plain":
        return {}
    gain = residual_mixing(model, input_ids).composite_gain
    return {f"hc/composite_gain_{name}": value for name, value in gain.items()}


class _Clock(TrainerCallback):
    """Marks when the first step starts so the first log's throughput excludes set-up time."""

    def __init__(self):
        self.mark: float | None = None
        self.step = 0

    def on_step_begin(self, args, state, control, **kwargs):
        if self.mark is None:
            self.mark, self.step = time.perf_counter(), state.global_step


class PlaitTrainer(Trainer):
    """`Trainer` with atomic checkpoints, Plait's weight-decay groups and throughput/MFU logging."""

    def __init__(
        self,
        *args,
        keep_last: int | None = None,
        tokens_per_step: int = 0,
        seq_len: int = 0,
        peak: float | None = None,
        evaluation: dict[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.evaluation = evaluation or {}  # periodic_evaluation's settings (eval_dataset holds the texts)
        self.keep_last = keep_last
        self.tokens_per_step = tokens_per_step
        self.peak = peak
        self.flops_token = flops_per_token(self.model, seq_len)
        self.clock = _Clock()
        self.add_callback(self.clock)
        self.probe_ids: torch.Tensor | None = None  # one training sequence, to log the HC composite gain on
        self.last_finite: dict[str, float] = {}  # the last logged step whose loss and grad norm were finite

    def training_step(self, model, inputs, num_items_in_batch=None):
        ids = inputs.get("input_ids")  # none for image models
        self.probe_ids = ids[:1].detach() if ids is not None else None
        return super().training_step(model, inputs, num_items_in_batch)

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Plait's evaluation (`plait.eval.periodic`) instead of `Trainer`'s loss loop."""
        texts = (eval_dataset or self.eval_dataset)["text"]
        model = self.accelerator.unwrap_model(self.model)
        scored = periodic_evaluation(model, self.processing_class, list(texts), **self.evaluation)
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in scored.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        # Before a log line or a checkpoint: a non-finite loss (summed since the last log) or gradient norm
        # stops the run, so NaN weights are never saved over the last good checkpoint nor logged as a loss.
        if self.control.should_log or self.control.should_save:
            self._stop_if_not_finite(tr_loss, grad_norm)
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def _stop_if_not_finite(self, tr_loss: torch.Tensor, grad_norm) -> None:
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
        local = [getattr(p, "ds_tensor", p) for p in model.parameters()]  # ZeRO-3: this rank's partition
        bad = torch.tensor([float(any(not torch.isfinite(p).all() for p in local if p.numel()))])
        if self.accelerator.gather(bad.to(self.accelerator.device)).any():
            raise RunError(
                f"training diverged: the weights hold non-finite values at step {self.state.global_step}; "
                "checkpoint not saved (the previous one is kept)"
            )

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        no_decay = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
        # Modules may list local parameter names to keep undecayed (KAN adapters: knots, scales, weights).
        no_decay |= {
            f"{prefix}.{n}" for prefix, m in model.named_modules() for n in getattr(m, "no_decay", ())
        }
        return [
            name
            for name, p in model.named_parameters()
            if len(getattr(p, "ds_shape", p.shape)) >= 2 and name not in no_decay
        ]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.clock.mark is not None:
            now = time.perf_counter()
            steps = self.state.global_step - self.clock.step
            if steps > 0:
                world = self.args.world_size
                tokens_per_s = steps * self.tokens_per_step / (now - self.clock.mark)
                tflops = tokens_per_s * self.flops_token / world / 1e12
                logs["tokens_per_s"] = tokens_per_s
                logs["tflops_per_device"] = tflops
                if self.peak:
                    logs["mfu"] = tflops / self.peak
            self.clock.mark, self.clock.step = now, self.state.global_step
            logs.update(composite_gain(self.accelerator.unwrap_model(self.model), self.probe_ids))
            self.last_finite = {
                "step": self.state.global_step,
                "loss": logs["loss"],
                **({"grad_norm": logs["grad_norm"]} if "grad_norm" in logs else {}),
            }
        super().log(logs, start_time)

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if getattr(self, "_staging", False) else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """Write the checkpoint under `.staging/`, then (all ranks done) rename it into place and rotate.
        Weights that are not all finite are never saved: the run stops with the last good checkpoint kept."""
        self._stop_if_weights_not_finite(model)
        run_dir = self._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staged, final = os.path.join(run_dir, STAGING_DIR, name), os.path.join(run_dir, name)
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            _fsync_tree(staged)
            if os.path.exists(
                final
            ):  # an older run's checkpoint of the same step: move it aside, then replace
                replaced = os.path.join(run_dir, STAGING_DIR, f"replaced-{name}")
                shutil.rmtree(replaced, ignore_errors=True)
                os.rename(final, replaced)
                os.rename(staged, final)
                shutil.rmtree(replaced)
            else:
                os.rename(staged, final)
            _fsync_dir(run_dir)
            rotate(run_dir, self.keep_last)
            with contextlib.suppress(OSError):  # leave no empty staging directory behind
                os.rmdir(os.path.join(run_dir, STAGING_DIR))
        self.accelerator.wait_for_everyone()


def _fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints in `run_dir`, oldest step first."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def rotate(run_dir: str | Path, keep_last: int | None) -> None:
    if keep_last is None:
        return
    for old in checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


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
    t, o, c, lg, ev = recipe.train, recipe.optim, recipe.checkpoint, recipe.logging, recipe.eval
    scheduler, scheduler_kwargs = _scheduler(recipe)
    report_to = ["wandb"] if lg.wandb else []
    if t.precision == "fp16" and not torch.cuda.is_available():
        raise RecipeError("train.precision='fp16' needs a GPU; use 'bf16' or 'fp32' on CPU")
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
        eval_strategy="steps" if ev.every else "no",
        eval_steps=ev.every or None,
        logging_nan_inf_filter=False,  # a non-finite loss stops the run (PlaitTrainer), never logs as 0
        save_strategy="steps" if c.every else "no",
        save_steps=c.every or 1,
        report_to=report_to,
        run_name=lg.run_name,
        disable_tqdm=not lg.progress_bar,
        dataloader_num_workers=t.dataloader_workers,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
        deepspeed=recipe.engine.deepspeed,
    )


def load_tokenizer(recipe: Recipe, args: TrainingArguments, documents) -> Any:
    """The recipe's tokenizer, or a byte-level BPE trained on the training text (saved under output_dir so a
    resumed run uses the very same one); the main process trains it, the others load it."""
    if recipe.data.tokenizer:
        return AutoTokenizer.from_pretrained(recipe.data.tokenizer)
    path = Path(recipe.train.output_dir) / "tokenizer"
    with args.main_process_first(desc="train tokenizer"):
        if not (path / "tokenizer.json").exists():
            from .tokenizer import train_bpe_tokenizer

            vocab = recipe.model.config.get("vocab_size", 8192)
            tok = train_bpe_tokenizer(
                iter_texts(documents, recipe.data.tokenizer_train_documents),
                vocab_size=vocab,
                model_max_length=recipe.data.seq_len,
            )
            if args.should_save:
                tok.save_pretrained(path)
        return AutoTokenizer.from_pretrained(path)


def build_model(recipe: Recipe, tokenizer) -> torch.nn.Module:
    from plait.modeling import PlaitForCausalLM

    if recipe.model.pretrained:
        model = load_pretrained(
            recipe.model.pretrained,
            PlaitForCausalLM,
            attn_implementation=recipe.model.attn_implementation,
            dtype=torch.float32,
        )
    else:
        config = model_config(
            recipe,
            vocab_size=len(tokenizer),
            **{name: getattr(tokenizer, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")},
        )
        config._attn_implementation = recipe.model.attn_implementation
        model = PlaitForCausalLM(config)
    if model.config.vocab_size < len(tokenizer):
        raise RecipeError(
            f"model.config.vocab_size={model.config.vocab_size} is smaller than the tokenizer's "
            f"{len(tokenizer)} tokens"
        )
    # Weights stay fp32 (the optimizer's master copy, saved as such); bf16/fp16 training runs under autocast.
    # No cache in training: transformers only detects packed (document-masked) sequences without one.
    model.config.use_cache = False
    return model


def describe_engine(trainer: Trainer, recipe: Recipe) -> str:
    """One line: the engine, world size and precision that actually run (from Accelerate's state). A
    launcher that asked for FSDP and got another engine (Accelerate drops FSDP on CPU) is an error."""
    state = trainer.accelerator.state
    asked_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked_fsdp and str(state.distributed_type) != "DistributedType.FSDP":
        raise RunError(
            f"the launcher asked for FSDP but Accelerate runs {state.distributed_type} here (it drops FSDP "
            "on CPU): the run would not shard. Use launch/accelerate/ddp.yaml or a ZeRO config on CPU."
        )
    engine = str(state.distributed_type).rsplit(".", 1)[-1]
    if state.deepspeed_plugin is not None:
        engine += f" ZeRO-{state.deepspeed_plugin.zero_stage}"
    return f"engine {engine}, world size {state.num_processes}, precision {recipe.train.precision}"


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
    cache_dir = recipe.data.cache_dir or str(output_dir / "data_cache")
    collator = default_data_collator
    if recipe.finetune.method is not None:  # a pretrained model, a fine-tuning method (plait.train.finetune)
        from .finetune import prepare_finetune

        tokenizer, dataset, collator, model, extra = prepare_finetune(recipe, args, cache_dir)
        callbacks = [*(callbacks or []), *extra]
    else:
        documents = load_documents(recipe.data)
        tokenizer = load_tokenizer(recipe, args, documents)
        with args.main_process_first(desc="tokenize and pack"):
            dataset = build_lm_dataset(
                documents, tokenizer, recipe.data, cache_dir=cache_dir, seed=recipe.train.seed
            )
        set_seed(recipe.train.seed)  # the initial weights depend only on the seed
        model = build_model(recipe, tokenizer)

    held_out = None
    if recipe.eval.every:  # language models only (the recipe checks)
        held_out = load_documents(recipe.data, recipe.eval.split)
        held_out = Dataset.from_dict({"text": list(iter_texts(held_out, recipe.eval.max_documents))})
    tokens_per_step = (
        recipe.train.micro_batch_size * recipe.train.grad_accum * args.world_size * recipe.data.seq_len
    )
    trainer = PlaitTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=held_out,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
        keep_last=recipe.checkpoint.keep_last,
        tokens_per_step=tokens_per_step,
        seq_len=recipe.data.seq_len,
        peak=peak_tflops(recipe.train.precision, recipe.logging.peak_tflops),
        evaluation={
            "seq_len": recipe.data.seq_len,
            "tasks": recipe.eval.tasks,
            "limit": recipe.eval.limit,
            "batch_size": recipe.eval.batch_size,
        },
    )

    engine = describe_engine(trainer, recipe)
    if args.should_save:
        print(
            f"plait-train: {engine}; " + (f"resuming from {resume}" if resume else "fresh start"), flush=True
        )
    trainer.train(resume_from_checkpoint=resume)

    if args.should_save:  # the whole run's metrics, also for runs started by a launcher (bench, scripts)
        (output_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    final_dir = None
    if recipe.checkpoint.save_final and trainer.state.global_step >= recipe.train.max_steps:
        final_dir = output_dir / "final"
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        unwrapped.config.use_cache = True
        trainer.save_model(
            str(final_dir)
        )  # gathers ZeRO-3 shards (stage3_gather_16bit_weights_on_model_save)
        if args.should_save:
            tokenizer.save_pretrained(final_dir)
    if recipe.logging.wandb:
        import wandb

        if wandb.run is not None:
            wandb.finish()  # flush and close the run (offline: its .wandb file is complete on return)
    trainer.accelerator.wait_for_everyone()
    return RunResult(output_dir, final_dir, trainer.state.log_history, trainer)


def losses(log_history: list[dict[str, Any]]) -> dict[int, float]:
    """Step -> logged training loss."""
    return {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry}
