"""The tiny recipe's loss curve against the committed reference (`data/tiny_loss_curve.json`): a change to
the math of any component, to the initialisation or to the data order changes the curve and fails here, on
purpose. After an intended change, regenerate the reference and commit it with the change:

    PLAIT_REGENERATE_REFERENCE=1 .venv/bin/python -m pytest tests/train/test_reference_curve.py
"""

import json
import os
from pathlib import Path

import torch
import transformers

from plait.train.recipe import load_recipe
from plait.train.trainer import losses, run

REFERENCE = Path(__file__).parent / "data" / "tiny_loss_curve.json"
# The shipped tiny recipe, shrunk: fewer documents, shorter blocks, six logged steps, nothing saved.
OVERRIDES = [
    "data.max_documents=8",
    "data.seq_len=32",
    "optim.warmup_steps=1",
    "train.max_steps=6",
    "checkpoint.every=0",
    "checkpoint.save_final=false",
    "logging.every=1",
    "logging.progress_bar=false",
]
REL = 1e-4  # far above float noise between machines (~1e-6 after six steps), far below any real change


def test_tiny_recipe_repeats_the_committed_loss_curve(tmp_path):
    result = run(load_recipe("tiny", [f"train.output_dir={tmp_path}", *OVERRIDES]))
    curve = {str(step): loss for step, loss in losses(result.trainer.state.log_history).items()}
    if os.environ.get("PLAIT_REGENERATE_REFERENCE"):
        versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        reference = {"recipe": "tiny", "overrides": OVERRIDES, "generated_with": versions, "losses": curve}
        REFERENCE.write_text(json.dumps(reference, indent=2) + "\n")
    reference = json.loads(REFERENCE.read_text())
    regenerate = f"if intended, regenerate it: {__doc__.strip().splitlines()[-1].strip()}"
    assert reference["overrides"] == OVERRIDES, f"the reference was made with other overrides; {regenerate}"
    assert curve.keys() == reference["losses"].keys(), (curve, reference["losses"])
    for step, expected in reference["losses"].items():
        assert abs(curve[step] - expected) <= REL * abs(expected), (
            f"the tiny recipe's loss at step {step} is {curve[step]:.6f}, the committed reference "
            f"{REFERENCE.name} says {expected:.6f}: the math of a component, the initialisation or the data "
            f"order changed; {regenerate}"
        )
