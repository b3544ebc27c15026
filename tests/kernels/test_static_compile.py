"""Every Triton kernel compiles for real GPUs (sm_90, sm_80) within limits, checked without a GPU.

Compiling every launch takes minutes on two cores, so `bench/kernels_static.py` does it once and commits
`bench/results/kernels_static_sm{90,80}.json`; this test runs its `--check`: the launches the code makes now
are all in both reports (a kernel's source or launch table changed since fails, naming the rerun), none
has spills, too much shared memory or too many registers for the occupancy it needs, and recompiling the
heaviest launch of each kernel for sm_90 gives the recorded numbers. It runs in a subprocess without
`TRITON_INTERPRET`, which would replace the JIT functions."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_kernel_launch_compiles_for_sm90_and_sm80_within_limits():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "kernels_static.py"), "--check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
