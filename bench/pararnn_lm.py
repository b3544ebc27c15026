"""Small LM comparison for ParaRNN: attention vs ParaGRU vs ParaLSTM vs a hybrid, validation loss at matched
parameters and equal tokens, byte-level on the default corpus, three seeds paired by seed.

The comparison is the shipped sweep `bench/sweeps/pararnn_lm.yaml`, and this script is `plait-sweep` on that
file: it takes plait-sweep's options and its report goes where the file says
(bench/results/sweep_pararnn_lm_cpu.{md,json,png}).

    python bench/pararnn_lm.py              # = plait-sweep bench/sweeps/pararnn_lm.yaml
    python bench/pararnn_lm.py --plan       # the runs, their sizes, FLOPs and status
"""

from __future__ import annotations

import sys
from pathlib import Path

from plait.train.sweep import main

SWEEP = Path(__file__).parent / "sweeps" / "pararnn_lm.yaml"

if __name__ == "__main__":
    sys.exit(main([str(SWEEP), *sys.argv[1:]]))
