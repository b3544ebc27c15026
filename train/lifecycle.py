"""Process-level behaviour of a training process: workers end with their launcher, and library warnings are
printed once.

torch's elastic launcher (behind `accelerate launch` and `torchrun`) starts each worker in a session of its
own, so killing the launcher, even its whole process group with `kill -9`, leaves the workers training and
writing checkpoints beside a restarted run. Each worker therefore asks the kernel for a SIGTERM when its
parent dies (Linux `prctl(PR_SET_PDEATHSIG)`); elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import warnings

PR_SET_PDEATHSIG = 1


def exit_with_parent() -> bool:
    """Arrange SIGTERM for this process when its parent dies; True where the platform supports it. Called
    by launched workers only (a process started from a shell would die with its terminal otherwise)."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def launched_worker() -> bool:
    """This process was started by a distributed launcher (torchrun / accelerate / deepspeed set these)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def one_warning_each() -> None:
    """Each warning once per process, and library deprecations on rank 0 only. DeepSpeed's collectives call
    deprecated `torch.distributed` functions every step, and libraries enter `warnings.catch_warnings` so
    often that Python's own "once" registry is cleared between calls (it resets whenever the filters change):
    by default such a warning prints on every step of every rank. The filters are left alone (a test that
    turns warnings into errors still gets its errors); only what is printed is deduplicated."""
    main = int(os.environ.get("RANK", "0")) == 0
    shown: set[tuple[str, type]] = set()
    show = warnings.showwarning

    def show_once(message, category, filename, lineno, file=None, line=None):
        if not main and issubclass(category, (FutureWarning, DeprecationWarning)):
            return
        if (str(message), category) in shown:
            return
        shown.add((str(message), category))
        show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_once
