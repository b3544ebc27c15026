"""Workers end with their launcher.

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
