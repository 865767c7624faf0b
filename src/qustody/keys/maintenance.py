"""The background rewrap: every worker moves retiring keys' data keys along.

After ``qustody keys rotate``, each worker's rewrapper runs
:meth:`~qustody.keys.service.KeyService.rewrap_step` every ``interval``
seconds, and back to back while there is work, until every retiring version
is retired. Several workers share the work safely (compare-and-set per
value); a worker killed mid-batch loses its uncommitted batch only, which the
next round does again.
"""

from __future__ import annotations

import logging

from qustody.domain.periodic import Periodic
from qustody.keys.service import KeyService

logger = logging.getLogger(__name__)


class Rewrapper(Periodic):
    def __init__(self, keys: KeyService, interval: float, batch: int = 256) -> None:
        super().__init__("key-rewrapper", interval)
        self._keys = keys
        self._batch = batch

    def round(self) -> None:
        while not self.stopping:
            try:
                progress = self._keys.rewrap_step(self._batch)
            except Exception as exc:  # noqa: BLE001 (kept alive; the next round retries)
                # Key ids and counts only: never a key or a payload.
                logger.warning("key rewrap failed: %s: %s", type(exc).__name__, exc)
                return
            for key in progress.retired:
                logger.info("key %s retired: nothing references it any more", key)
            if progress.moved == 0:
                return
            logger.info(
                "key rewrap: %d data keys moved, %d left", progress.moved, progress.remaining
            )
