"""Single-process training: exact resume, a kill during a checkpoint save, wandb offline metrics."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from tiny_model import tiny_model_config, tiny_text_data
from transformers import AutoModelForCausalLM, TrainerCallback

import plait.modeling  # noqa: F401  (registers Plait with the Auto classes)
from plait.train.recipe import recipe_from_dict
from plait.train.trainer import STAGING_DIR, losses, run

STEPS = 4


def tiny_recipe(output_dir: Path, **logging) -> dict:
    return {
        "model": {"config": tiny_model_config()},
        "data": tiny_text_data(),
        "optim": {"lr": 3e-3, "warmup_steps": 1, "weight_decay": 0.1},
        "train": {
            "output_dir": str(output_dir),
            "max_steps": STEPS,
            "micro_batch_size": 2,
            "precision": "fp32",
            "seed": 1,
        },
        "checkpoint": {"every": 2, "keep_last": 1},
        "logging": {"every": 1, "progress_bar": False, **logging},
    }


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, logged to wandb in offline mode."""
    out = tmp_path_factory.mktemp("reference")
    result = run(recipe_from_dict(tiny_recipe(out, wandb=True)))
    return result


def test_final_model_loads_and_checkpoints_rotate(reference):
    curve = losses(reference.log_history)
    assert sorted(curve) == list(range(1, STEPS + 1))
    model = AutoModelForCausalLM.from_pretrained(reference.final_dir)
    assert model.config.vocab_size == 300 and model.config.use_cache
    # keep_last=1: only the newest checkpoint remains; no staging leftovers
    assert [p.name for p in reference.output_dir.glob("checkpoint-*")] == [f"checkpoint-{STEPS}"]
    assert not any((reference.output_dir / STAGING_DIR).glob("*"))
    entry = next(e for e in reference.log_history if "loss" in e)
    assert entry["tokens_per_s"] > 0 and entry["tflops_per_device"] > 0 and "grad_norm" in entry


def test_resume_reproduces_the_uninterrupted_loss_curve(reference, tmp_path):
    first = run(recipe_from_dict(tiny_recipe(tmp_path)), callbacks=[StopAt(2)])
    assert first.final_dir is None and (tmp_path / "checkpoint-2").is_dir()
    counter = CountSteps()
    resumed = run(recipe_from_dict(tiny_recipe(tmp_path)), callbacks=[counter])
    assert counter.steps == STEPS - 2  # it continued from step 2, it did not start over
    assert losses(resumed.log_history) == losses(reference.log_history)  # bit-exact in fp32


KILLER = textwrap.dedent(
    """
    import os, signal, sys, yaml
    import transformers.trainer as T
    from plait.train.recipe import recipe_from_dict
    from plait.train.trainer import run

    save = T.Trainer._save_optimizer_and_scheduler

    def killed_mid_save(self, output_dir):
        if self.state.global_step == 4:  # the model weights of checkpoint 4 are written, the rest is not
            os.kill(os.getpid(), signal.SIGKILL)
        return save(self, output_dir)

    T.Trainer._save_optimizer_and_scheduler = killed_mid_save
    run(recipe_from_dict(yaml.safe_load(open(sys.argv[1]))))
    """
)


def test_kill_during_checkpoint_save_keeps_the_previous_checkpoint(reference, tmp_path):
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(out)))
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(recipe)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (out / STAGING_DIR / "checkpoint-4" / "model.safetensors").exists()  # it died inside the save
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    AutoModelForCausalLM.from_pretrained(out / "checkpoint-2")
    resumed = run(recipe_from_dict(tiny_recipe(out)))  # auto-resume from checkpoint-2
    assert losses(resumed.log_history) == losses(reference.log_history)
    assert not (out / STAGING_DIR / "checkpoint-4").exists()


def wandb_history(run_file: Path) -> list[dict[str, str]]:
    """History rows of an offline `.wandb` file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, buf, rows = run_file.read_bytes(), 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
                )
    return rows


def test_wandb_offline_run_holds_logged_metrics(reference):
    (run_file,) = reference.output_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows = [r for r in wandb_history(run_file) if "train/loss" in r]
    assert len(rows) == STEPS
    logged = {int(r["train/global_step"]): float(r["train/loss"]) for r in rows}
    assert logged == pytest.approx(losses(reference.log_history))
    assert all(
        "train/tokens_per_s" in r and "train/grad_norm" in r and "train/learning_rate" in r for r in rows
    )


def test_streaming_run_resumes_exactly(tmp_path):
    def recipe(out):
        data = tiny_recipe(out)
        data["data"].update(streaming=True)
        return recipe_from_dict(data)

    straight = run(recipe(tmp_path / "straight"))
    run(recipe(tmp_path / "split"), callbacks=[StopAt(2)])
    resumed = run(recipe(tmp_path / "split"))
    assert sorted(losses(straight.log_history)) == list(range(1, STEPS + 1))
    assert losses(resumed.log_history) == losses(straight.log_history)


def test_hyper_connection_run_logs_composite_gain_and_skips_decay_of_static_parameters(tmp_path):
    recipe = tiny_recipe(tmp_path / "run")
    recipe["model"]["config"].update(residual="mhc", hc_streams=2)
    result = run(recipe_from_dict(recipe))
    logged = [entry for entry in result.log_history if "loss" in entry]
    assert logged and all("hc/composite_gain_max" in entry for entry in logged)
    # Doubly stochastic H_res: the product over depth has row and column sums 1.
    assert all(abs(entry["hc/composite_gain_max"] - 1.0) < 1e-3 for entry in logged)
    model = AutoModelForCausalLM.from_pretrained(result.final_dir)
    no_decay = model.no_weight_decay()
    assert no_decay and no_decay <= dict(model.named_parameters()).keys()
