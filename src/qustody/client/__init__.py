"""The Qustody Python SDK: an HTTP client for the gateway, and Qiskit integration.

``Client`` speaks the REST API (``docs/api.md``) and needs nothing but httpx.
``QustodyProvider`` / ``QustodyBackend`` / ``QustodyJob`` plug the gateway into
Qiskit's ``BackendV2`` interface, and ``QustodySampler`` into ``SamplerV2``; those load
Qiskit on first use, so ``from qustody.client import Client`` stays fast.

This package talks HTTP only and imports no server code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qustody.client.client import Client
from qustody.client.dpop import DpopKey
from qustody.client.errors import (
    CircuitConversionError,
    QustodyAPIError,
    QustodyClientError,
    QustodyConnectionError,
    QustodyJobError,
    QustodyProtocolError,
    QustodyTimeoutError,
    StepUpRequired,
)
from qustody.client.identity import ExchangedToken, exchange_token
from qustody.client.models import (
    Backend,
    CircuitInfo,
    ClbitRegister,
    Health,
    IssuedCredential,
    IssuedToken,
    Job,
    JobError,
    JobState,
    Member,
    Project,
    Readiness,
    Result,
    ResultMetadata,
    Tenant,
    TenantCreated,
    Transition,
)

if TYPE_CHECKING:
    from qustody.client.qiskit_provider import QustodyBackend, QustodyJob, QustodyProvider
    from qustody.client.sampler import QustodySampler, QustodySamplerJob

_LAZY = {
    "QustodyProvider": "qustody.client.qiskit_provider",
    "QustodyBackend": "qustody.client.qiskit_provider",
    "QustodyJob": "qustody.client.qiskit_provider",
    "QustodySampler": "qustody.client.sampler",
    "QustodySamplerJob": "qustody.client.sampler",
}


def __getattr__(name: str) -> Any:
    """Load the Qiskit-facing classes on first use (Qiskit takes a while to import)."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module_name), name)


__all__ = [
    "Backend",
    "CircuitConversionError",
    "CircuitInfo",
    "ClbitRegister",
    "Client",
    "DpopKey",
    "ExchangedToken",
    "Health",
    "IssuedCredential",
    "IssuedToken",
    "Job",
    "JobError",
    "JobState",
    "Member",
    "Project",
    "QustodyAPIError",
    "QustodyBackend",
    "QustodyClientError",
    "QustodyConnectionError",
    "QustodyJob",
    "QustodyJobError",
    "QustodyProtocolError",
    "QustodyProvider",
    "QustodySampler",
    "QustodySamplerJob",
    "QustodyTimeoutError",
    "Readiness",
    "Result",
    "ResultMetadata",
    "StepUpRequired",
    "Tenant",
    "TenantCreated",
    "Transition",
    "exchange_token",
]
