"""A background thread that does one round of work every few seconds.

Workers run several: the audit checkpointer, the key rewrapper, the
approval sweeper, the webhook deliverer. Each is a :class:`Periodic` whose
:meth:`~Periodic.round` does the work; a round that raises is logged by the
exception's type only (never its message, which may quote data) and the
next round retries, so one bad round never stops the thread.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)


class Periodic:
    """Calls :meth:`round` every ``interval`` seconds on a daemon thread
    named ``name``, from :meth:`start` until :meth:`stop`."""

    def __init__(self, name: str, interval: float) -> None:
        self.name = name
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def round(self) -> None:
        """One round of work (subclasses)."""
        raise NotImplementedError

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (a long round may end early)."""
        return self._stop.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.round()
            except Exception as exc:  # noqa: BLE001 (kept alive; the next round retries)
                logger.warning("%s: a round failed: %s", self.name, type(exc).__name__)
