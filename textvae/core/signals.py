"""SIGTERM / SIGINT during training: finish the step, save, stop; every rank stops after the same step."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from textvae.errors import TrainingStopped


class StopSignals:
    """The first SIGTERM or SIGINT asks to stop after the step in progress; a second one stops at once.

    Under torchrun each step's all-reduce carries whether a rank was signalled (`received`), and `agree` reads the
    sum: every rank reads the same one, so all stop after the same step. A signal that comes after the all-reduce
    waits for the next one, else the ranks would part ways in the collectives of the checkpoint.
    """

    def __init__(self):
        self.signal: int | None = None  # a signal this process received
        self.stopping: int | None = None  # the signal all ranks agreed on: stop after this step

    @property
    def received(self) -> bool:
        return self.signal is not None

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Catch the signals while training (in the main thread only: Python delivers them there)."""
        self.signal = self.stopping = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        if self.signal is not None:  # a second signal: stop now, the last checkpoint stays as it is
            raise KeyboardInterrupt
        self.signal = signum

    def agree(self, signalled_ranks: float) -> None:
        """After a step's all-reduce: stop when any rank was signalled (SIGTERM when only another one was)."""
        if signalled_ranks and self.stopping is None:
            self.stopping = self.signal or signal.SIGTERM

    def stop(self, step: int, checkpoint: str) -> TrainingStopped:
        """The error that ends training once the checkpoint after the agreed step is written."""
        name = signal.Signals(self.stopping).name
        return TrainingStopped(f"stopped by {name} at step {step}; {checkpoint} is saved: run the same command to "
                               "resume", exit_code=128 + self.stopping)  # fmt: skip
