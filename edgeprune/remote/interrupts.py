"""Ctrl-C during work on devices: how a run in another thread is told to stop, and how the clean-up that
follows (kill the harness, release the lock, remove the run dir) is kept from being cut short.

Python delivers SIGINT to the main thread only. A run in a worker thread (`bench_many`, `check_many`)
never sees it, so the main thread sets a `threading.Event` that each session polls while it waits
(`Session.check_cancel`), and then waits for every worker to clean up before it raises."""

from __future__ import annotations

import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


class shielded:
    """Defers Ctrl-C for a bounded clean-up step: a second Ctrl-C during the kill or the unlock must not
    leave the device locked for the lease. Only the main thread can hold signals off (elsewhere SIGINT
    never arrives anyway). A Ctrl-C that came meanwhile is raised at the end, unless an exception (the
    first Ctrl-C, an error) is already on its way out."""

    def __enter__(self) -> "shielded":
        self.pending = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._defer)
        return self

    def _defer(self, signum, frame) -> None:
        self.pending = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        if self.pending and exc_type is None and sys.exc_info()[0] is None:
            raise KeyboardInterrupt


def run_parallel(items: Sequence[T], work: Callable[[T, threading.Event], None]) -> None:
    """`work(item, cancel)` for each item, each in a thread of its own, and wait for all of them. On Ctrl-C
    `cancel` is set, every worker stops its device work and cleans up (further Ctrl-Cs deferred meanwhile),
    then KeyboardInterrupt is raised with what the workers said about what they stopped."""
    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, len(items)))
    futures = [pool.submit(work, item, cancel) for item in items]
    try:
        for future in futures:
            future.result()
    except KeyboardInterrupt:
        # The executor's own shutdown would wait for every run to finish on its own (minutes): the cause of
        # a Ctrl-C that was not answered until the benchmark was over.
        cancel.set()
        with shielded():
            pool.shutdown(wait=True)
        stopped = [str(f.exception()) for f in futures
                   if f.done() and not f.cancelled() and isinstance(f.exception(), KeyboardInterrupt)]
        raise KeyboardInterrupt("; ".join(s for s in stopped if s)) from None
    finally:
        pool.shutdown(wait=True)
