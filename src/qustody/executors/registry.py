"""The backend catalogue: one place that maps names to backends."""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterable

from qustody.domain.errors import ConfigurationError
from qustody.executors.aer import aer_backends
from qustody.executors.errors import UnknownBackend
from qustody.executors.interfaces import Backend


class BackendRegistry:
    """Backends by name, in registration order. Thread-safe."""

    def __init__(self, backends: Iterable[Backend] = ()) -> None:
        self._lock = threading.Lock()
        self._backends: dict[str, Backend] = {}
        for backend in backends:
            self.register(backend)

    def register(self, backend: Backend) -> None:
        """Add a backend; a second backend with the same name is refused."""
        name = backend.info.name
        with self._lock:
            if name in self._backends:
                raise ConfigurationError(f"backend {name!r} is registered twice")
            self._backends[name] = backend

    def get(self, name: str) -> Backend:
        """The backend called ``name``; :class:`UnknownBackend` otherwise."""
        with self._lock:
            backend = self._backends.get(name)
            if backend is None:
                raise UnknownBackend(name, builtins.list(self._backends))
            return backend

    def list(self) -> builtins.list[Backend]:
        """Every backend, in registration order."""
        with self._lock:
            return builtins.list(self._backends.values())

    def names(self) -> builtins.list[str]:
        with self._lock:
            return builtins.list(self._backends)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._backends

    def __len__(self) -> int:
        with self._lock:
            return len(self._backends)


def default_registry() -> BackendRegistry:
    """The embedded deployment's backends: the three Aer simulators."""
    return BackendRegistry(aer_backends())
