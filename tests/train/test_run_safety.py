"""A run is never silently wrong: bad inputs stop with a clear error naming what is wrong, and nothing written
before (checkpoints, the stored recipe) is lost or replaced. Grouped by class of input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM, TrainerCallback

import plait.modeling  # noqa: F401  (registers Plait with the Auto classes)
from plait.modeling import PlaitConfig, PlaitForCausalLM
from plait.train.cli import main
from plait.train.errors import RunError
from plait.train.recipe import RecipeError, load_recipe
from plait.train.run_dir import AlreadyFinished, DirectoryLock, unsafe_pickles
from plait.train.trainer import run

TINY = [
    "data.max_documents=6",
    "data.seq_len=32",
    "train.max_steps=4",
    "checkpoint.every=2",
    "checkpoint.keep_last=2",
    "logging.every=1",
    "logging.progress_bar=false",
]


def recipe(output_dir: Path, *overrides: str):
    return load_recipe("tiny", [f"train.output_dir={output_dir}", *TINY, *overrides])


def from_pretrained(model_dir: Path, output_dir: Path):
    """The tiny recipe starting from `model_dir` (its config.json defines the model)."""
    return recipe(output_dir, "model.config={}", f"model.pretrained={model_dir}")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "plait.train", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    run(recipe(out))
    return out


# ------------------------------------------------------------------------------------------ numerics
class PoisonAt(TrainerCallback):
    """Makes the weights NaN at the end of a step, as a diverging update would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                model.lm_head.weight.fill_(float("nan"))


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    diverged = r"training diverged: non-finite loss( and gradient norm)? at step 4 \(last finite at step 3"
    with pytest.raises(RunError, match=diverged):
        run(recipe(tmp_path), callbacks=[PoisonAt(3)])
    assert not (tmp_path / "final").exists() and not (tmp_path / "checkpoint-4").exists()
    weights = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    history = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert all(entry["loss"] > 0 for entry in history if "loss" in entry)  # no NaN logged as 0


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    with pytest.raises(RunError, match="weights hold non-finite values at step 4"):
        run(recipe(tmp_path, "logging.every=100"), callbacks=[PoisonAt(4)])
    assert not (tmp_path / "checkpoint-4").exists() and (tmp_path / "checkpoint-2").is_dir()


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=.inf", "optim.lr=inf is not finite"),
        ("optim.lr=.nan", "optim.lr=nan is not finite"),
        ("model.config.rms_norm_eps=.nan", "rms_norm_eps=nan is not finite"),
        ("model.config.rope_theta=.inf", "rope_theta=inf is not finite"),
        ("model.config.lssar_power=.inf", "lssar_power=inf is not finite"),
    ],
)
def test_non_finite_values_are_refused(tmp_path, override, message):
    with pytest.raises(RecipeError, match=message):
        recipe(tmp_path, override)


def test_data_without_a_label_to_learn_is_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n".join(json.dumps({"text": ""}) for _ in range(50)))
    with pytest.raises(RecipeError, match="no token has a label to learn"):
        run(
            recipe(
                tmp_path / "run",
                "data.source=files",
                f"data.paths=[{empty}]",
                "data.max_documents=50",
            )
        )


# ------------------------------------------------------------------------------------------ typos and types
@pytest.mark.parametrize(
    "override, message",
    [
        ("model.config.hiden_size=128", "no field 'hiden_size'; did you mean 'hidden_size'"),
        ("optim.lrr=0.1", "unknown key optim.lrr.*did you mean 'lr'"),
        ("model.config.num_attention_heads=5", "not divisible by num_attention_heads=5"),
        ("model.config.hidden_size=abc", "hidden_size='abc' has the wrong type"),
        ("model.config.residual=mhcc", "residual='mhcc' is not a valid choice"),
        ("train.seed=-1", r"train.seed=-1 is out of range"),
        ("train.output_dir=''", "train.output_dir='' is out of range; expected a non-empty path"),
    ],
)
def test_typos_and_bad_values_name_the_field(tmp_path, override, message):
    with pytest.raises(RecipeError, match=message):
        recipe(tmp_path, override)


def test_config_json_typo_is_refused(tmp_path):
    PlaitConfig(
        hidden_size=64, num_attention_heads=4, intermediate_size=64, num_hidden_layers=1
    ).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["residul"] = config.pop("residual")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no field 'residul'; did you mean 'residual'"):
        AutoConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "ids, message",
    [
        (torch.tensor([1, 2]), r"must be \[batch, seq\]"),
        (torch.zeros(1, 0, dtype=torch.long), r"must be \[batch, seq\] with seq >= 1"),
        (torch.tensor([[1, 512]]), r"token id 512, outside the vocabulary \[0, 512\)"),
        (torch.tensor([[1.0, 2.0]]), "integer token ids"),
    ],
)
def test_bad_model_inputs_are_clear_errors(ids, message):
    model = PlaitForCausalLM(
        PlaitConfig(
            vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
        )
    )
    with pytest.raises(ValueError, match=message):
        model(ids)


# ------------------------------------------------------------------------------------------ foreign weights
def test_llama_checkpoint_as_pretrained_points_to_the_converter(tmp_path):
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
        )
    ).save_pretrained(tmp_path / "llama")
    with pytest.raises(
        RecipeError, match="is a 'llama' checkpoint, not 'plait'.*plait.modeling.convert_llama"
    ):
        run(from_pretrained(tmp_path / "llama", tmp_path / "run"))


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_incomplete_or_extra_tensors_are_refused(finished, tmp_path, change):
    shutil.copytree(finished / "final", tmp_path / "model")
    weights = load_file(tmp_path / "model" / "model.safetensors")
    if change == "missing":
        weights.pop("model.layers.1.mlp_norm.weight")
    else:
        weights["model.layers.9.mlp_norm.weight"] = torch.ones(64)
    save_file(weights, tmp_path / "model" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        RecipeError, match=f"does not match the model tensor for tensor \\({change}: model.layers"
    ):
        run(from_pretrained(tmp_path / "model", tmp_path / "run"))


# ------------------------------------------------------------------------------------------ run directories
def test_a_different_run_in_the_same_directory_is_refused_with_a_diff(finished):
    stored = (finished / "recipe.json").read_text()
    with pytest.raises(RunError, match=r"holds a run with a different recipe:\n  optim.lr: 0.001 -> 0.002"):
        run(recipe(finished, "optim.lr=2e-3"))
    assert (finished / "recipe.json").read_text() == stored


def test_a_finished_run_is_not_trained_again(finished):
    checkpoints = sorted(p.name for p in finished.glob("checkpoint-*"))
    final = (finished / "final" / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(AlreadyFinished, match="already finished at step 4"):
        run(recipe(finished))
    assert sorted(p.name for p in finished.glob("checkpoint-*")) == checkpoints
    assert (finished / "final" / "model.safetensors").stat().st_mtime_ns == final
    assert not (finished / ".staging").exists()


def test_a_directory_in_use_is_refused(finished):
    holder = DirectoryLock(finished)
    holder.acquire()
    try:
        with pytest.raises(RunError, match=f"is in use by another run \\(pid {os.getpid()}\\)"):
            run(recipe(finished))
    finally:
        holder.release()


def test_a_damaged_latest_checkpoint_is_named_and_the_previous_offered(finished, tmp_path):
    run_dir = tmp_path / "run"  # a moved copy of the run, without its final model: 2 more steps to go
    shutil.copytree(finished, run_dir, ignore=shutil.ignore_patterns("final", ".lock"))
    longer = ("train.max_steps=6", "checkpoint.resume_despite_changes=true")
    (run_dir / "checkpoint-4" / "optimizer.pt").unlink()
    with pytest.raises(
        RunError, match=r"checkpoint-4: optimizer.pt is missing.*previous good checkpoint with .*checkpoint-2"
    ):
        run(recipe(run_dir, *longer))
    (run_dir / "checkpoint-2" / "trainer_state.json").write_text("{garbage")
    with pytest.raises(RunError, match="optimizer.pt is missing.*No earlier checkpoint is complete"):
        run(recipe(run_dir, *longer))
    shutil.rmtree(run_dir / "checkpoint-4")
    with pytest.raises(RunError, match="checkpoint-2: trainer_state.json is missing or not a trainer state"):
        run(recipe(run_dir, *longer))


def test_cli_prints_the_resumed_checkpoint_and_the_engine(finished, tmp_path):
    run_dir = tmp_path / "run"
    short = [f"--set={o}" for o in [f"train.output_dir={run_dir}", *TINY, "train.max_steps=3"]]
    first = cli("tiny", *short)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "engine NO, world size 1, precision fp32; fresh start" in first.stdout
    again = cli("tiny", *short)
    assert again.returncode == 0
    assert "already finished at step 3" in again.stdout and "; nothing to do" in again.stdout
    interrupted = tmp_path / "interrupted"  # the finished run as it was after its step-2 checkpoint
    shutil.copytree(finished, interrupted, ignore=shutil.ignore_patterns("final", ".lock", "checkpoint-4"))
    resumed = cli("tiny", *[f"--set={o}" for o in [f"train.output_dir={interrupted}", *TINY]])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {interrupted / 'checkpoint-2'}" in resumed.stdout


# ---------------------------------------------------------------------------------------- CLI: no tracebacks
@pytest.mark.parametrize(
    "args, message",
    [
        (["RECIPE_DIR"], "is not a file"),
        (["BAD_YAML"], "is not valid YAML"),
        (["tiny", "--set", "optim.lr=[1,"], "the value is not valid YAML"),
        (["tiny", "--set", "train.output_dir=/proc/plait-cannot-write"], "cannot be written"),
        (["tiny", "--set", "train.seed=-1"], "train.seed=-1 is out of range"),
        (["tiny", "--print", "--set", "model.config.hiden_size=3"], "did you mean 'hidden_size'"),
    ],
)
def test_cli_user_errors_are_one_line_without_traceback(tmp_path, args, message):
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    args = [{"RECIPE_DIR": str(tmp_path), "BAD_YAML": str(tmp_path / "bad.yaml")}.get(a, a) for a in args]
    result = cli(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x01binary", "looks binary"),
        ("caf\xe9\n".encode("latin-1"), "line 1: not UTF-8"),
        (b'{"text": "ok"}\n{"text": broken\n', "line 2: invalid JSON"),
        (b'{"text": "ok"}\n{"text": null}\n', "line 2: the text field 'text' is None"),
        (b'{"text": "ok"}\n{"text": 3}\n', "line 2: the text field 'text' is 3"),
    ],
)
def test_bad_data_files_are_named_with_their_line(tmp_path, content, message):
    path = tmp_path / ("data.jsonl" if content.startswith(b"{") else "data.txt")
    path.write_bytes(content)
    with pytest.raises(RecipeError, match=message):
        run(recipe(tmp_path / "run", "data.source=files", f"data.paths=[{path}]"))


class Exploit:
    """What a crafted checkpoint file holds: unpickling it with code execution would run a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_deepspeed_files_that_need_code_execution_are_found_without_running_it(tmp_path):
    step = tmp_path / "checkpoint-2" / "global_step2"
    step.mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(2)}, "ds_version": "0.19"}, step / "mp_rank_00_model_states.pt")
    assert unsafe_pickles(tmp_path / "checkpoint-2") == []
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": Exploit(marker)}, step / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    assert unsafe_pickles(tmp_path / "checkpoint-2") == ["zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    assert not marker.exists()


def test_truncated_pretrained_weights_are_refused(finished, tmp_path):
    shutil.copytree(finished / "final", tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(RecipeError, match="model.pretrained=.*(cannot be read|does not match)"):
        run(from_pretrained(tmp_path / "model", tmp_path / "run"))


def test_a_full_disk_is_one_line(monkeypatch, capsys):
    import errno

    from plait.train import cli, trainer

    def full(recipe):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/.staging/checkpoint-2/optimizer.pt")

    monkeypatch.setattr(trainer, "run", full)
    assert cli.main(["tiny"]) == 1
    assert (
        "No space left on device writing /data/run/.staging/checkpoint-2/optimizer.pt"
        in capsys.readouterr().err
    )


# ------------------------------------------------------------------------ CLI: bad inputs, one line each
def _parquet(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a document"] * rows}), path)


@pytest.mark.parametrize(
    "name, write, message",
    [
        ("empty.jsonl", lambda p: p.write_text(""), "is empty"),
        ("blank.txt", lambda p: p.write_text("\n \n"), "is empty"),
        ("none.json", lambda p: p.write_text("[]"), "holds no records"),
        ("corrupt.parquet", lambda p: p.write_bytes(b"PAR1 not really parquet"), "is not a readable parquet"),
        ("rowless.parquet", lambda p: _parquet(p, 0), "is empty"),
    ],
)
def test_empty_or_unreadable_data_files_are_one_line(tmp_path, capsys, name, write, message):
    path = tmp_path / name
    write(path)
    args = [f"train.output_dir={tmp_path / 'run'}", *TINY, "data.source=files", f"data.paths=[{path}]"]
    assert main(["tiny", *[f"--set={a}" for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"plait-train: error: data.paths[0]={str(path)!r} {message}"), err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "recipe_text, overrides, message",
    [
        ("", [], "is empty; give its sections"),
        ("# only a comment\n", [], "is empty; give its sections"),
        (None, ["model.config.vocab_size=100"], "model.config.vocab_size=100 is too small to train"),
        (None, ["data.tokenizer=TMP/no-such-tokenizer"], "data.tokenizer='TMP/no-such-tokenizer' does not"),
        (
            None,
            ["model.config={}", "model.pretrained=TMP/no-model"],
            "model.pretrained='TMP/no-model' does not",
        ),
        (
            "finetune-minilm-sst2",
            ["model.pretrained=TMP/no-model", "optim.warmup_steps=0"],
            "model.pretrained='TMP/no-model' does not",
        ),
        (None, ["data.tokenizer=TMP"], "data.tokenizer='TMP': cannot load a tokenizer from it"),
        (
            None,
            ["model.config.layer_types=[attention,mamba]"],
            "layer_types[1]='mamba' (an alias transformers renames to 'linear_attention') is not a valid",
        ),
    ],
)
def test_bad_recipes_are_one_line_naming_the_file_or_field(tmp_path, capsys, recipe_text, overrides, message):
    if recipe_text is None or recipe_text.startswith("finetune"):
        name = recipe_text or "tiny"
    else:
        name = str(tmp_path / "recipe.yaml")
        (tmp_path / "recipe.yaml").write_text(recipe_text)
    overrides = [o.replace("TMP", str(tmp_path)) for o in overrides]
    args = [f"train.output_dir={tmp_path / 'run'}", *TINY, *overrides]
    assert main([name, *[f"--set={a}" for a in args]]) == 2
    err = capsys.readouterr().err
    assert message.replace("TMP", str(tmp_path)) in err and err.startswith("plait-train: error: "), err
    assert err.count("\n") == 1
