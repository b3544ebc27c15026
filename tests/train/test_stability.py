"""Loss spikes: the skip-step rule skips an injected spike exactly (the weights and the optimizer state stay
those of the step before), counts and logs it, and stops the run after too many spikes in a row."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from transformers import TrainerCallback

from plait.kernels.lssa import Rows
from plait.modeling.softplus_attention import DegenerateRowCounter
from plait.train.diagnostics import _degenerate_shares
from plait.train.errors import RunError
from plait.train.recipe import RecipeError, load_recipe
from plait.train.stability import SpikeRule
from plait.train.trainer import run

SPIKE_AT = 6
LSSAR = "model.config.attention=lssar"


def recipe(output_dir: Path, *overrides: str):
    return load_recipe(
        "tiny",
        [
            f"train.output_dir={output_dir}",
            "data.max_documents=6",
            "data.seq_len=32",
            "train.max_steps=7",
            "checkpoint.every=0",
            "checkpoint.save_final=false",
            "logging.every=2",
            "logging.progress_bar=false",
            "optim.skip_step=true",
            "optim.skip_step_window=8",
            # 4 accepted steps make a tight window: 50 standard deviations keeps the tiny model's own step to
            # step variation (up to ~10 here) from counting while a x1000 loss is still far beyond it
            "optim.skip_step_sigmas=50",
            *overrides,
        ],
    )


class Spikes(TrainerCallback):
    """Multiplies the training loss by 1000 at the given steps (as a bad batch would), and keeps copies of
    the weights and the optimizer state at the end of every step."""

    def __init__(self, *steps: int):
        self.steps = set(steps)
        self.snapshots: dict[int, tuple[dict, dict]] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def scale(module, inputs, output):
            if module.training and output.loss is not None and state.global_step + 1 in self.steps:
                output.loss = output.loss * 1000
            return output

        model.register_forward_hook(scale)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        moments = {k: v["exp_avg"].clone() for k, v in optimizer.state_dict()["state"].items()}
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.snapshots[state.global_step] = (weights, moments)


def test_a_spike_is_skipped_exactly_and_logged(tmp_path):
    spike = Spikes(SPIKE_AT)
    result = run(recipe(tmp_path), callbacks=[spike])
    (before, moments_before), (after, moments_after) = (
        spike.snapshots[SPIKE_AT - 1],
        spike.snapshots[SPIKE_AT],
    )
    for name, weight in before.items():
        assert torch.equal(after[name], weight), name  # the spike's update was not applied
    for key, moment in moments_before.items():
        assert torch.equal(moments_after[key], moment)  # nor its Adam moments
    assert not torch.equal(spike.snapshots[SPIKE_AT - 2][0]["lm_head.weight"], before["lm_head.weight"])
    logged = [entry for entry in result.log_history if "loss" in entry]
    marked = [entry for entry in logged if entry.get("skipped")]
    assert [entry["step"] for entry in marked] == [SPIKE_AT]  # its own log line, marked
    assert logged[-1]["skipped_steps"] == 1
    saved = json.loads((tmp_path / "log_history.json").read_text())
    assert [e["step"] for e in saved if e.get("skipped")] == [SPIKE_AT]


def test_too_many_spikes_in_a_row_stop_the_run(tmp_path):
    with pytest.raises(RunError, match=r"2 steps in a row skipped as loss spikes \(up to step 7; last: loss"):
        run(recipe(tmp_path, "optim.skip_step_max_in_row=1"), callbacks=[Spikes(SPIKE_AT, SPIKE_AT + 1)])


def test_the_rule_resumes_with_its_window():
    rule = SpikeRule(sigmas=3.0, window=4, max_in_row=2)
    for step, loss in enumerate([2.0, 2.1, 1.9, 2.0], start=1):
        assert not rule.check(step, loss, 1.0)
    assert rule.check(5, 9.0, 1.0) and rule.check(6, 1.0, 50.0)
    restored = SpikeRule(sigmas=3.0, window=4, max_in_row=2)
    state = type("State", (), {"stateful_callbacks": {"SpikeRule": json.loads(json.dumps(rule.state()))}})
    restored.on_train_begin(None, state, None)
    assert restored.history == rule.history and (restored.skipped, restored.in_row) == (2, 2)
    with pytest.raises(RunError, match="3 steps in a row"):
        restored.check(7, 9.0, 1.0)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "optim.skip_step_sigmas=0",
            "optim.skip_step_sigmas=0.0 is out of range; expected a positive number",
        ),
        ("optim.skip_step_window=1", "optim.skip_step_window=1 is out of range; expected an integer >= 2"),
        ("optim.skip_step_max_in_row=0", "optim.skip_step_max_in_row=0 is out of range"),
        ("optim.skip_step=maybe", "optim.skip_step='maybe' is not valid; expected true/false"),
    ],
)
def test_bad_skip_step_settings_name_the_field(tmp_path, override, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(")):
        recipe(tmp_path, override)


def test_diagnostics_are_logged_and_plotted(tmp_path):
    """mHC residual and a ParaRNN layer: every second step's log line has each block's gradient norm,
    update-to-weight ratio and output RMS, the ParaRNN residual and the HC gain; diagnostics.png marks the
    skipped spike."""
    result = run(
        recipe(
            tmp_path,
            "logging.every=1",
            "logging.diagnostics_every=2",
            "model.config.residual=mhc",
            "model.config.layer_types=[attention, pararnn_gru]",
            "model.config.pararnn_mode=parallel",
        ),
        callbacks=[Spikes(SPIKE_AT)],
    )
    logged = {entry["step"]: entry for entry in result.log_history if "loss" in entry}
    for step in (2, 4):
        entry = logged[step]
        for i in (0, 1):
            assert entry[f"grad_norm/block_{i}"] > 0
            assert 1e-6 < entry[f"update_ratio/block_{i}"] < 0.1  # lr 1e-3 Adam: about lr per step
            assert entry[f"output_rms/block_{i}"] > 0
        assert 0 <= entry["pararnn/residual_max"] < 1e-3
        assert entry["hc/composite_gain_forward"] > 0
    assert "grad_norm/block_0" not in logged[3]
    assert logged[SPIKE_AT]["update_ratio/block_0"] == 0.0  # the skipped step changed nothing
    png = (tmp_path / "diagnostics.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def png_height(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[20:24], "big")  # the IHDR chunk: width, then height


def test_lssar_degenerate_rows_are_logged_and_plotted(tmp_path):
    """LSSAR on packed documents: every second step logs the share of degenerate rows and the worst layer's
    share, in [0, 1]; diagnostics.png gets a sixth panel for them (2.4 inches at 100 dpi each)."""
    run(recipe(tmp_path, "logging.every=1", "logging.diagnostics_every=2", "train.max_steps=4", LSSAR))
    logged = {e["step"]: e for e in json.loads((tmp_path / "log_history.json").read_text()) if "loss" in e}
    for step in (2, 4):
        assert 0 <= logged[step]["lssar/degenerate_rows"] <= logged[step]["lssar/degenerate_rows_max"] <= 1
    assert "lssar/degenerate_rows" not in logged[3]
    assert png_height(tmp_path / "diagnostics.png") == 6 * 240


class ZeroQueries(TrainerCallback):
    """Forces the queries of the first attention layer to zero: all its scores are equal."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.model.layers[0].mixer.q_proj.register_forward_hook(lambda module, i, out: torch.zeros_like(out))


def test_zero_queries_make_every_row_past_the_third_degenerate(tmp_path):
    """Unpacked 32-token blocks, 2 forwards a step: in the layer with zero queries the 29 rows with N_i > 3
    of each 32 are degenerate (the first three have O_i = 0), in the other layer none, so the share is 29/64
    and the worst layer's 29/32."""
    overrides = (
        "logging.diagnostics_every=2",
        "train.max_steps=2",
        "optim.warmup_steps=1",
        "train.grad_accum=2",
    )
    result = run(
        recipe(tmp_path, *overrides, "data.document_masking=false", LSSAR), callbacks=[ZeroQueries()]
    )
    entry = next(e for e in result.log_history if e.get("step") == 2 and "loss" in e)
    assert (entry["lssar/degenerate_rows"], entry["lssar/degenerate_rows_max"]) == (29 / 64, 29 / 32)


def test_lssa_logs_no_degenerate_rows(tmp_path):
    """LSSA does not re-weight: no row can be degenerate, nothing is logged."""
    overrides = (
        "logging.diagnostics_every=2",
        "train.max_steps=2",
        "optim.warmup_steps=1",
        "model.config.attention=lssa",
    )
    entry = next(e for e in run(recipe(tmp_path, *overrides)).log_history if e.get("step") == 2)
    assert "grad_norm/block_0" in entry and not any(k.startswith("lssar/") for k in entry)


def _shares_worker(rank, port, queue):
    """Rank 0's first layer has 29 of 32 rows degenerate, every other layer and rank none."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        counters = [DegenerateRowCounter(), DegenerateRowCounter()]
        for i, counter in enumerate(counters):
            degenerate = torch.arange(32) >= 3 if (rank, i) == (0, 0) else torch.zeros(32, dtype=torch.bool)
            counter.add(Rows(seen=torch.ones(32, dtype=torch.bool), degenerate=degenerate))
        queue.put((rank, _degenerate_shares(counters)))
    finally:
        torch.distributed.destroy_process_group()


def test_degenerate_row_shares_are_summed_over_the_ranks():
    """Two gloo processes log the same shares, of the rows of both: 29 of 4 × 32 overall, 29 of 2 × 32 in
    the worst layer (rank 0 alone would say 29/64 and 29/32)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").Queue()
    mp.start_processes(_shares_worker, args=(port, queue), nprocs=2, start_method="spawn")
    shares = dict(queue.get(timeout=60) for _ in range(2))
    expected = {"lssar/degenerate_rows": 29 / 128, "lssar/degenerate_rows_max": 29 / 64}
    assert shares == {0: expected, 1: expected}


def test_diagnostics_and_timeout_settings_name_the_field(tmp_path):
    with pytest.raises(RecipeError, match=r"logging.diagnostics_every=-1 is out of range; expected null or"):
        recipe(tmp_path, "logging.diagnostics_every=-1")
    with pytest.raises(RecipeError, match=r"train.collective_timeout=0 is out of range; expected an integer"):
        recipe(tmp_path, "train.collective_timeout=0")
