"""plait-sweep: the statistics on known cases, the scaling fit, sweep-file validation, parameter matching,
pairing (the same batches for every variant of a seed), resume of a half-finished sweep, failed runs,
and that every shipped sweep file plans."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats as scipy_stats
from tiny_model import tiny_model_config, tiny_text_data
from transformers import TrainerCallback

from plait.train.scaling import fit_power_law
from plait.train.stats import mean_interval, paired_difference
from plait.train.sweep import emit, main, run_sweep, train_runs
from plait.train.sweep_spec import SweepError, load_sweep, plan

TINY = {
    "model": {"config": tiny_model_config()},
    "data": tiny_text_data(),
    "optim": {"lr": 3e-3, "warmup_steps": 1},
    "train": {"max_steps": 3, "micro_batch_size": 2, "precision": "fp32"},
    "checkpoint": {"every": 0},
    "logging": {"every": 1, "progress_bar": False},
}
MHC = ["model.config.residual=mhc", "model.config.hc_streams=2"]


def write_sweep(tmp_path: Path, **fields) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY))
    spec = {
        "recipe": "base.yaml",
        "variants": {"plain": [], "mhc": MHC},
        "seeds": [0, 1],
        "metrics": {"loss": "last"},
        "output_dir": str(tmp_path / "runs"),
        **fields,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --- statistics --------------------------------------------------------------------------------------------


def test_mean_interval_is_the_t_interval():
    m = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) * sd / sqrt(n)
    assert m["mean"] == 3.0 and m["n"] == 5
    assert m["low"] == pytest.approx(3.0 - half) and m["high"] == pytest.approx(3.0 + half)
    assert mean_interval([2.0])["low"] is None


def test_identical_variants_differ_by_zero_and_are_not_resolved():
    rng = np.random.default_rng(0)
    baseline = list(rng.normal(4.0, 0.1, 5))
    same = paired_difference(baseline, baseline)
    assert same["mean"] == 0 and same["p"] == 1.0 and not same["resolved"]
    # the same variant retrained: seed noise only
    noisy = [b + e for b, e in zip(baseline, rng.normal(0, 0.01, 5), strict=True)]
    d = paired_difference(noisy, baseline)
    assert d["low"] < 0 < d["high"] or not d["resolved"]
    assert d["p"] == pytest.approx(scipy_stats.ttest_rel(noisy, baseline).pvalue)


def test_a_planted_difference_is_detected_through_seed_noise():
    rng = np.random.default_rng(1)
    baseline = list(rng.normal(4.0, 0.3, 4))  # seed-to-seed spread far above the effect ...
    better = [b - 0.05 + e for b, e in zip(baseline, rng.normal(0, 0.005, 4), strict=True)]
    d = paired_difference(better, baseline)  # ... but pairing by seed removes it
    assert d["resolved"] and d["high"] < 0 and d["low"] < -0.05 < d["high"]
    assert d["p"] == pytest.approx(scipy_stats.ttest_rel(better, baseline).pvalue) and d["p"] < 0.01
    unpaired = scipy_stats.ttest_ind(better, baseline).pvalue
    assert unpaired > 0.5  # the same numbers, unpaired, resolve nothing


def test_power_law_fit_recovers_known_parameters():
    rng = np.random.default_rng(2)
    compute = np.repeat([1e12, 4e12, 1.6e13, 6.4e13], 3)
    loss = 2.0 + 3.0 * (compute / 1e12) ** -0.4 + rng.normal(0, 0.005, compute.size)
    fit = fit_power_law(compute, loss)
    for name, true in (("E", 2.0), ("A", 3.0), ("alpha", 0.4)):
        assert fit[name]["low"] < true < fit[name]["high"], (name, fit[name])
    assert fit["at_bound"] == []
    flat = fit_power_law(
        [1, 1, 10, 10, 100, 100], [5.8, 5.85, 5.1, 5.2, 4.6, 4.5]
    )  # a straight line in log C
    assert "E" in flat["at_bound"]  # no irreducible loss visible: E is not determined, and the fit says so
    assert "error" in fit_power_law([1.0, 2.0, 2.0], [3.0, 2.0, 2.1])


# --- sweep files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, fragments",
    [
        ({"baseline": "nope"}, ["baseline='nope'", "plain, mhc"]),
        ({"seeds": [0, 0]}, ["seeds=[0, 0]"]),
        ({"metrics": {"loss": "final"}}, ["metrics.loss='final'", "last"]),
        ({"seed": [1]}, ["unknown key seed", "seeds"]),
        ({"match": {"by": "memory"}}, ["match.by='memory'", "'params'"]),
        ({"grid": {"model.config.residual": ["mhc"]}}, ["exactly one of variants", "grid"]),
        ({"variants": {"mhc": ["model.config.residual=nope"]}}, ["variant 'mhc'", "residual"]),
        ({"ladder": {"sizes": [1], "scale": {"model.config.hidden_size": 0}}}, ["ladder.scale.model"]),
    ],
)
def test_bad_sweep_files_name_the_field(tmp_path, fields, fragments, capsys):
    path = write_sweep(tmp_path, **fields)
    with pytest.raises(SweepError) as e:
        plan(load_sweep(path))
    for fragment in fragments:
        assert fragment in str(e.value)
    assert main([str(path), "--plan"]) == 2
    assert capsys.readouterr().err.startswith("plait-sweep: error: ")


def test_grid_is_the_cartesian_product(tmp_path):
    grid = {"model.config.residual": ["plain", "mhc"], "model.config.mlp_act": ["silu", "relu2"]}
    sweep = load_sweep(write_sweep(tmp_path, variants=None, grid=grid, set=["model.config.hc_streams=2"]))
    assert list(sweep.variants) == [
        "residual=plain,mlp_act=silu",
        "residual=plain,mlp_act=relu2",
        "residual=mhc,mlp_act=silu",
        "residual=mhc,mlp_act=relu2",
    ]
    assert sweep.variants["residual=mhc,mlp_act=relu2"][-1] == 'model.config.mlp_act="relu2"'


@pytest.mark.parametrize("by", ["params", "flops"])
def test_variants_are_matched_to_the_baseline_within_tolerance(tmp_path, by):
    unmatched = plan(load_sweep(write_sweep(tmp_path)))[-1]
    runs = plan(
        load_sweep(write_sweep(tmp_path, match={"by": by, "width": "model.config.intermediate_size"}))
    )
    plain = next(r for r in runs if r.variant == "plain")
    mhc = [r for r in runs if r.variant == "mhc"]
    index = 0 if by == "params" else 1
    target = (plain.parameters, plain.flops_per_token)[index]
    before = (unmatched.parameters, unmatched.flops_per_token)[index]
    assert abs(before - target) / target > 0.01  # mHC adds parameters: matching has work to do
    for run in mhc:
        got = (run.parameters, run.flops_per_token)[index]
        assert abs(got - target) / target <= 0.01
        assert run.matched["deviation"] == pytest.approx((got - target) / target)
        assert run.recipe.model.config["intermediate_size"] == run.matched["value"] < 64


def test_impossible_match_is_an_error_naming_the_width(tmp_path):
    match = {"width": "model.config.num_hidden_layers", "tolerance": 0.001}
    with pytest.raises(SweepError, match="match.tolerance=0.001"):
        plan(load_sweep(write_sweep(tmp_path, match=match)))


def test_ladder_scales_width_depth_and_tokens(tmp_path):
    ladder = {
        "sizes": [1, 2],
        "scale": {"model.config.hidden_size": 16, "model.config.intermediate_size": 32},
        "tokens_per_parameter": 0.01,
    }
    runs = plan(load_sweep(write_sweep(tmp_path, ladder=ladder, seeds=[0])))
    assert [r.id for r in runs] == [
        "size1/plain/seed0",
        "size1/mhc/seed0",
        "size2/plain/seed0",
        "size2/mhc/seed0",
    ]
    small, large = runs[0], runs[2]
    assert large.recipe.model.config["hidden_size"] == 32 and small.recipe.model.config["hidden_size"] == 16
    for run in (small, large):  # max_steps = tokens_per_parameter * N / tokens per step, rounded up
        assert run.recipe.train.max_steps == math.ceil(0.01 * run.parameters / (2 * 32))
    assert runs[1].recipe.train.max_steps == small.recipe.train.max_steps  # one budget per size


SHIPPED = sorted((Path(__file__).parents[2] / "bench" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_sweeps_load_and_plan(path):
    """Every shipped sweep file is valid and plans one run per (size, variant, seed) (planning
    validates every run's recipe and its size matching) without training anything."""
    sweep = load_sweep(path)
    runs = plan(sweep)
    sizes = sweep.spec.ladder.sizes if sweep.spec.ladder else [None]
    assert len(runs) == len(sizes) * len(sweep.variants) * len(sweep.spec.seeds)
    assert len({r.run_dir for r in runs}) == len(runs)
    assert str(sweep.report_prefix).startswith("bench/results/sweep_")


# --- the runner (training stubbed: the tests are about the runner's bookkeeping) ---------------------------


def fake_train(calls: list, fail: str | None = None):
    """Writes the log history a finished run leaves; the loss depends on the variant and the seed."""

    def train(recipe):
        calls.append(recipe.train.output_dir)
        if fail and fail in recipe.train.output_dir:
            raise RuntimeError("out of memory (planted)")
        mhc = recipe.model.config.get("residual") == "mhc"
        history = [
            {"step": s, "loss": 5.0 - 0.1 * s - 0.2 * mhc + 0.05 * recipe.train.seed}
            for s in range(1, recipe.train.max_steps + 1)
        ]
        out = Path(recipe.train.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "log_history.json").write_text(json.dumps(history))

    return train


def test_half_finished_sweep_resumes_only_the_missing_runs(tmp_path):
    path = write_sweep(tmp_path, seeds=[0, 1, 2])
    runs = plan(load_sweep(path))
    calls = []
    train_runs(runs[:4], fake_train(calls))  # interrupted after 4 of the 6 runs
    assert len(calls) == 4
    calls.clear()
    summary = run_sweep(path, train=fake_train(calls))
    assert sorted(calls) == sorted(str(r.run_dir) for r in runs[4:])
    mhc = summary["sizes"][0]["variants"][1]
    assert mhc["seeds"] == [0, 1, 2]
    assert mhc["vs_baseline"]["loss"]["mean"] == pytest.approx(-0.2)
    assert Path(f"{load_sweep(path).report_prefix}.md").is_file()


def test_a_failed_run_is_reported_and_left_out(tmp_path, capsys):
    path = write_sweep(tmp_path, seeds=[0, 1, 2])
    summary = run_sweep(path, train=fake_train([], fail="mhc/seed1"))
    assert [f["id"] for f in summary["failed"]] == ["mhc/seed1"]
    assert "out of memory (planted)" in summary["failed"][0]["error"]
    assert "mhc/seed1 FAILED" in capsys.readouterr().err
    mhc = summary["sizes"][0]["variants"][1]
    assert mhc["seeds"] == [0, 2] and mhc["metrics"]["loss"]["n"] == 2
    assert mhc["vs_baseline"]["loss"]["seeds"] == [0, 2]
    report = Path(f"{load_sweep(path).report_prefix}.md").read_text()
    assert "`mhc/seed1` failed: RuntimeError: out of memory (planted)" in report
    calls = []
    run_sweep(path, train=fake_train(calls))  # the next run retries it, and only it
    assert calls == [str(tmp_path / "runs" / "mhc" / "seed1")]


def test_emitted_commands_cover_the_unfinished_runs(tmp_path):
    path = write_sweep(tmp_path)
    sweep = load_sweep(path)
    runs = plan(sweep)
    train_runs(runs[:1], fake_train([]))
    script = emit(sweep, runs, "plait-train", slurm=True)
    lines = (tmp_path / "runs" / "commands.txt").read_text().splitlines()
    assert len(lines) == 3 and all(line.startswith("plait-train ") for line in lines)
    assert "#SBATCH --array=0-2" in script.read_text()
    emitted = yaml.safe_load(Path(lines[-1].split(" ", 1)[1]).read_text())
    assert emitted["train"]["seed"] == 1 and emitted["model"]["config"]["residual"] == "mhc"


# --- pairing, with real training -------------------------------------------------------------------------


class RecordBatches(TrainerCallback):
    """The input ids of every training batch, recorded by a hook put on the model when training starts (the
    one-example forward of mHC's composite-gain probe is not a batch: left out)."""

    def __init__(self):
        self.batches = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def hook(module, call_args, call_kwargs):
            if len(call_kwargs["input_ids"]) == TINY["train"]["micro_batch_size"]:
                self.batches.append(call_kwargs["input_ids"].clone())

        model.register_forward_pre_hook(hook, with_kwargs=True)


def test_every_variant_of_a_seed_sees_the_same_batches(tmp_path):
    from plait.train.trainer import run

    recorded = {}

    def train(recipe):
        recorder = RecordBatches()
        run(recipe, callbacks=[recorder])
        recorded[recipe.train.output_dir] = recorder.batches

    path = write_sweep(tmp_path, seeds=[0, 1])
    summary = run_sweep(path, train=train)
    assert not summary["failed"]
    runs = {str(Path(d).relative_to(tmp_path / "runs")): b for d, b in recorded.items()}
    for seed in (0, 1):
        plain, mhc = runs[f"plain/seed{seed}"], runs[f"mhc/seed{seed}"]
        assert len(plain) == len(mhc) == 3
        assert all(torch.equal(a, b) for a, b in zip(plain, mhc, strict=True))
    assert not torch.equal(runs["plain/seed0"][0], runs["plain/seed1"][0])  # seeds do differ
