"""Child commands that die with the command that started them, even when it is killed with SIGKILL.

`lab2prod run` starts `dvc repro`, which starts a stage, which may start data-loader or DDP processes. A
SIGKILL cannot be caught, so the parent cannot clean up after itself: without help, DVC and the stage go on
as orphans, writing into the workspace a later run uses. So the child gets its own process group and a
watchdog: a tiny separate process (its own session) holding the read end of a pipe whose only write end is
the parent's. However the parent ends, the kernel closes that end; the watchdog reads EOF and stops the whole
group — SIGTERM, then SIGKILL after `grace_s`. Signals the parent receives (Ctrl-C, SIGTERM, SIGHUP) are passed
to the whole group, as a terminal would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

WATCHDOG = r"""
import os, signal, sys, time
pgid = int(sys.stdin.buffer.readline() or 0)
sys.stdin.buffer.read()  # EOF: the parent has ended, however it ended (exit, exception, SIGKILL)
grace = float(sys.argv[1])

def alive():
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True

if pgid > 0 and alive():
    os.killpg(pgid, signal.SIGTERM)
    end = time.monotonic() + grace
    while alive() and time.monotonic() < end:
        time.sleep(0.05)
    if alive():
        os.killpg(pgid, signal.SIGKILL)
"""


@contextlib.contextmanager
def process_group(cmd: list[str], grace_s: float = 10.0, **popen: Any) -> Iterator[subprocess.Popen]:
    """Start `cmd` (Popen keyword arguments as usual) in a new process group that cannot outlive this
    process. On leaving the block, whatever is left of the group is stopped; the caller waits for `cmd`."""
    read_end, write_end = os.pipe()
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", WATCHDOG, str(grace_s)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a signal to this process's group must not reach the watchdog
        )
    finally:
        os.close(read_end)
    try:
        child = subprocess.Popen(cmd, process_group=0, **popen)
        os.write(write_end, f"{child.pid}\n".encode())
        yield child
    finally:
        os.close(write_end)  # the watchdog stops what is left of the group (nothing, after a normal end)
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(timeout=grace_s + 5)


def run_group(
    cmd: list[str], grace_s: float = 10.0, on_signal: Callable[[int], None] | None = None, **popen: Any
) -> int:
    """Run `cmd` to its end in its own process group (see `process_group`), passing SIGINT, SIGTERM and
    SIGHUP on to the whole group (and to `on_signal`, which learns the command was stopped); its exit code."""
    with process_group(cmd, grace_s=grace_s, **popen) as child:
        previous: dict[int, Any] = {}

        def forward(signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signum)
            if on_signal is not None:
                on_signal(signum)

        if threading.current_thread() is threading.main_thread():
            for sig in FORWARDED:
                previous[sig] = signal.signal(sig, forward)
        try:
            return child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
