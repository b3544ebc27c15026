"""Two-process CPU (gloo) runs through the real launcher: `accelerate launch` with the shipped DDP, DeepSpeed
ZeRO-2, ZeRO-3 and FSDP2 configs (and ZeRO-1 through zero2.yaml pointed at zero1.json), each training a tiny
model a few steps and saving a `from_pretrained` model. Every engine computes what one process computes on
the same global batch: the same loss at every step and the same final weights."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_model import tiny_model_config, tiny_text_data
from transformers import AutoModelForCausalLM
from two_processes import CPU_ENV, launch, launch_command, shipped_config

import plait.modeling  # noqa: F401  (registers Plait with the Auto classes)
from plait.train.recipe import recipe_from_dict
from plait.train.run_dir import checkpoint_problems
from plait.train.trainer import run

ROOT = Path(__file__).resolve().parents[2]


def tiny_recipe(output_dir: Path) -> dict:
    return {
        "model": {"config": tiny_model_config()},
        "data": tiny_text_data(),
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "train": {"output_dir": str(output_dir), "max_steps": 3, "micro_batch_size": 2, "precision": "fp32"},
        "checkpoint": {"every": 2, "keep_last": 2},
        "logging": {"every": 1, "progress_bar": False},
    }


def _accelerate_config(engine: str, recipe: Path) -> Path:
    """The shipped config of `engine`; ZeRO-1 is zero2.yaml with zero1.json (written beside the recipe)."""
    if engine != "zero1":
        return shipped_config(engine)
    config = yaml.safe_load((ROOT / "launch/accelerate/zero2.yaml").read_text())
    config["deepspeed_config"]["deepspeed_config_file"] = str(ROOT / "launch/deepspeed/zero1.json")
    path = recipe.parent / "zero1.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(engine: str, recipe: Path) -> subprocess.CompletedProcess:
    return launch(_accelerate_config(engine, recipe), recipe)


def _losses(out: Path) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference for every engine: the same recipe in one process, whose micro-batch holds both ranks'
    (the same global batch, in the same order)."""
    out = tmp_path_factory.mktemp("one-process") / "run"
    recipe = tiny_recipe(out)
    recipe["train"]["micro_batch_size"] *= 2
    run(recipe_from_dict(recipe))
    return out


def assert_same_computation(out: Path, reference: Path, rel: float = 1e-4) -> None:
    """`out` logged `reference`'s loss at every step and ended with its weights (each tensor within `rel` of
    the reference in norm): the engine computed the same thing as one process."""
    losses, expected = _losses(out), _losses(reference)
    assert losses.keys() == expected.keys() == {1, 2, 3}
    for step, loss in expected.items():
        assert losses[step] == pytest.approx(loss, rel=rel), (step, losses, expected)
    final = load_file(out / "final" / "model.safetensors")
    reference_final = load_file(reference / "final" / "model.safetensors")
    assert final.keys() == reference_final.keys()
    for name, want in reference_final.items():
        error = (final[name] - want).norm() / want.norm()
        assert error <= rel, f"{name}: relative difference {error:.2e} from the one-process weights"


@pytest.mark.parametrize(
    "engine, rank1_file",
    [
        ("ddp", "rng_state_1.pth"),
        ("zero1", "global_step2/zero_pp_rank_1_mp_rank_00_optim_states.pt"),
        ("zero2", "global_step2/zero_pp_rank_1_mp_rank_00_optim_states.pt"),
        ("zero3", "global_step2/zero_pp_rank_1_mp_rank_00_model_states.pt"),
    ],
)
def test_two_process_run_through_accelerate_launch(engine, rank1_file, tmp_path, one_process):
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(out)))
    proc = _launch(engine, recipe)
    warned = Counter(line for line in proc.stderr.splitlines() if "Warning:" in line)
    assert not warned or max(warned.values()) == 1, warned.most_common(3)  # once, not per step per rank
    args = torch.load(out / "final" / "training_args.bin", weights_only=False)
    assert args.world_size == 2
    assert (out / "checkpoint-2" / rank1_file).exists()  # rank 1 wrote its own state: two real processes
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.lm_head.weight.shape == (300, 32)  # full (gathered) weights, also under ZeRO-3
    ids = torch.randint(0, 300, (1, 16))
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)
    assert_same_computation(out, one_process)
    if engine == "zero3":
        # Resume with sharded parameters and optimizer states: drop the last checkpoint and the final model,
        # relaunch; it continues from checkpoint-2 and step 3 repeats the uninterrupted loss exactly.
        uninterrupted = _losses(out)
        shutil.rmtree(out / "checkpoint-3")
        shutil.rmtree(out / "final")
        saved_at_2 = (out / "checkpoint-2" / "trainer_state.json").stat().st_ino
        _launch(engine, recipe)
        assert (out / "final" / "model.safetensors").exists()
        assert (out / "checkpoint-2" / "trainer_state.json").stat().st_ino == saved_at_2  # step 2 not redone
        assert _losses(out) == uninterrupted


def test_chunked_loss_under_zero3_repeats_the_logits_loss(tmp_path):
    """ZeRO-3 gathers a module's parameters only for that module's call: the chunked loss runs inside the LM
    head's own call, so it sees the full head weight and trains exactly as the logits loss does."""
    losses = {}
    for chunk in (None, 16):
        out = tmp_path / f"chunk-{chunk}"
        recipe = tiny_recipe(out)
        recipe["model"]["config"]["loss_chunk_size"] = chunk
        path = tmp_path / f"chunk-{chunk}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        _launch("zero3", path)
        losses[chunk] = _losses(out)
    assert losses[16].keys() == losses[None].keys() == {1, 2, 3}
    for step, loss in losses[None].items():
        assert losses[16][step] == pytest.approx(loss, rel=1e-5)


def _descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux-only")
def test_killing_the_launcher_ends_its_workers(tmp_path):
    """`kill -9` of the launcher's process group: torch's launcher put the workers in sessions of their own,
    so only their parent-death signal ends them (they must not train on beside a restarted run)."""
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    long_run = tiny_recipe(out)
    long_run["train"]["max_steps"] = 100_000
    long_run["checkpoint"]["every"] = 0
    long_run["data"]["max_repeats"] = 100_000  # 6 documents read over and over until killed
    recipe.write_text(yaml.safe_dump(long_run))
    env = {**CPU_ENV, "PYTHONUNBUFFERED": "1"}
    launcher = subprocess.Popen(
        launch_command(shipped_config("ddp"), recipe),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        for line in launcher.stdout:  # wait until the workers are training
            if "fresh start" in line or time.monotonic() > deadline:
                break
        workers = [
            pid
            for pid in _descendants(launcher.pid)
            if "plait.train" in Path(f"/proc/{pid}/cmdline").read_text()
        ]
        assert len(workers) >= 2, workers
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived their launcher"
    finally:
        for pid in _descendants(launcher.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_fsdp2_on_cpu_shards_resumes_exactly_and_gathers_the_final_model(tmp_path, one_process):
    """`fsdp.yaml` on CPU runs as FSDP2 (Accelerate alone would fall back to DDP): each rank writes its own
    half of a sharded (torch.distributed.checkpoint) checkpoint, a resume from it repeats the uninterrupted
    losses, and `final` holds the whole model, equal to the consolidated last checkpoint."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(out)))
    proc = _launch("fsdp", recipe)
    engine = (
        "engine FSDP2 (sharded_state_dict checkpoints), world size 2, precision fp32, checkpoints written in "
        "the background; fresh start"
    )
    assert engine in proc.stdout
    assert_same_computation(out, one_process)

    # each weight is saved in two halves, one written by each rank: sharded, not a replica of all of it
    metadata = FileSystemReader(out / "checkpoint-2" / "pytorch_model_fsdp_0").read_metadata()
    writers: dict[str, set[str]] = {}
    for index, stored in metadata.storage_data.items():
        writers.setdefault(index.fqn, set()).add(stored.relative_path)
    assert len(writers) == 21  # the tiny model's tensors
    for name, files in writers.items():
        chunks = metadata.state_dict_metadata[name].chunks
        assert len(chunks) == 2 and chunks[0].sizes[0] == chunks[1].sizes[0], (name, chunks)
        assert files == {"__0_0.distcp", "__1_0.distcp"}, (name, files)
    final = load_file(out / "final" / "model.safetensors")
    dcp_to_torch_save(out / "checkpoint-3" / "pytorch_model_fsdp_0", tmp_path / "consolidated.pt")
    consolidated = torch.load(tmp_path / "consolidated.pt")["model"]
    assert final.keys() == consolidated.keys()
    assert all(torch.equal(final[name], consolidated[name]) for name in final)
    reloaded = AutoModelForCausalLM.from_pretrained(out / "final")
    ids = torch.randint(0, 300, (1, 16))
    assert torch.isfinite(reloaded(input_ids=ids, labels=ids).loss)

    damaged = shutil.copytree(out / "checkpoint-3", tmp_path / "damaged")  # checked whole before a resume
    with open(damaged / "pytorch_model_fsdp_0" / "__1_0.distcp", "r+b") as shard:
        shard.truncate(1000)
    (damaged / "optimizer_0" / "__0_0.distcp").unlink()
    assert checkpoint_problems(damaged) == [
        "pytorch_model_fsdp_0/__1_0.distcp is truncated (1000 of "
        f"{(out / 'checkpoint-3' / 'pytorch_model_fsdp_0' / '__1_0.distcp').stat().st_size} bytes)",
        "optimizer_0/__0_0.distcp is missing",
    ]

    uninterrupted = _losses(out)
    shutil.rmtree(out / "checkpoint-3")
    shutil.rmtree(out / "final")
    proc = _launch("fsdp", recipe)
    assert f"resuming from {out / 'checkpoint-2'}" in proc.stdout
    assert _losses(out) == uninterrupted
    resumed = load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(resumed[name], final[name]) for name in final)


def test_fsdp1_on_cpu_is_refused_not_run_as_ddp(tmp_path):
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(out)))
    config = yaml.safe_load((ROOT / "launch/accelerate/fsdp.yaml").read_text())
    config["fsdp_config"]["fsdp_version"] = 1
    (tmp_path / "fsdp1.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "fsdp1.yaml")]
    cmd += ["--num_processes", "2", "--main_process_port", "0", "-m", "plait.train", str(recipe)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode != 0
    assert "fsdp_version=1 cannot shard on CPU" in proc.stderr
    assert not (out / "checkpoint-2").exists()
