"""Request facts the policies see, in the one shape the schema declares.

Pure functions: a backend as ``context.backend`` (and as a Backend entity's
attributes), the context of a job submission, the attributes of a stored job,
and the SDK version a client announces in its ``User-Agent``.
"""

from __future__ import annotations

import re

from qustody.domain.models import BackendInfo

#: The product token of the Qustody SDK (and the CLI, which uses it):
#: ``User-Agent: qustody-sdk/1.4.2``.
SDK_PRODUCT = "qustody-sdk"
_SDK = re.compile(r"(?:^|\s)qustody-sdk/(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?!\d)")

Facts = dict[str, str | int | bool]


def backend_facts(info: BackendInfo) -> Facts:
    """``context.backend`` (schema type ``BackendFacts``)."""
    return {
        "name": info.name,
        "simulator": info.simulator,
        "provider": info.provider,
        "environment": info.environment,
        "region": info.region,
        "max_qubits": info.max_qubits,
        "max_shots": info.max_shots,
    }


def backend_attributes(info: BackendInfo) -> Facts:
    """A ``Backend`` entity's attributes (its name is its id)."""
    facts = backend_facts(info)
    del facts["name"]
    return facts


def submission_context(info: BackendInfo, *, qubits: int | None, shots: int) -> dict[str, object]:
    """The context of ``job:submit``: the backend, where it runs, the circuit's
    size (``qubits`` is ``None`` when the circuit did not parse) and shots."""
    context: dict[str, object] = {
        "backend": backend_facts(info),
        "environment": info.environment,
        "region": info.region,
        "shots": shots,
    }
    if qubits is not None:
        context["qubits"] = qubits
    return context


def job_attributes(backend: str, qubits: int, shots: int) -> Facts:
    """A stored job's ``Job`` entity attributes beyond tenant, project and owner."""
    return {"backend": backend, "qubits": qubits, "shots": shots}


def sdk_context(user_agent: str | None) -> dict[str, object]:
    """``sdk_version`` and ``sdk_version_number`` from a ``qustody-sdk/X.Y.Z``
    product in ``User-Agent``; empty for any other client.

    The number is ``X * 1_000_000 + Y * 1_000 + Z``, so a policy compares
    versions as numbers: ``context.sdk_version_number < 1002000`` is "below 1.2.0".
    A ``User-Agent`` is the client's claim, not proof: a policy on it steers
    well-behaved clients to an upgrade, it does not keep anyone out.
    """
    if not user_agent:
        return {}
    match = _SDK.search(user_agent[:256])
    if match is None:
        return {}
    major, minor, patch = (int(part) for part in match.groups())
    return {
        "sdk_version": f"{major}.{minor}.{patch}",
        "sdk_version_number": major * 1_000_000 + minor * 1_000 + patch,
    }
