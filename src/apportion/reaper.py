"""A timer that reaps a store while no request opens (see ``Controller.start_reaper``)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from types import TracebackType

from apportion.errors import InvalidArgument
from apportion.ledger import check_seconds


class Reaper:
    """Calls ``reap`` every ``every`` seconds in a daemon thread, until :meth:`stop`.

    A failing reap is reported with a ``RuntimeWarning`` and tried again at the next tick;
    it never stops the thread.

    Args:
        reap: what to call (``Controller.reap``).
        every: seconds between calls (a positive number).
    """

    def __init__(self, reap: Callable[[], int], every: float) -> None:
        every = check_seconds("every", every, infinite=False)
        if every > threading.TIMEOUT_MAX:
            raise InvalidArgument("every", every, f"at most {threading.TIMEOUT_MAX:.0f} seconds")
        if not callable(reap):
            raise InvalidArgument("reap", reap, "a function to call")
        self._reap = reap
        self.every = every
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="apportion-reaper", daemon=True)

    def start(self) -> Reaper:
        """Start the thread (once); return the reaper."""
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread and wait for it to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._reap()
            except Exception as exc:  # a reap that fails is tried again at the next tick
                warnings.warn(f"apportion reaper: {exc!r}", RuntimeWarning, stacklevel=1)
            self.runs += 1

    def __enter__(self) -> Reaper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
