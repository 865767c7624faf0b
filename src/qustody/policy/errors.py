"""Errors of the policy module."""

from __future__ import annotations

from qustody.domain.errors import InvalidRequest, QustodyError


class PolicyError(QustodyError):
    """A policy set, schema or request the engine refuses to work with.

    Raised when policies are loaded (text that does not parse, a policy without
    an ``@id``, a policy that does not validate against the schema) and when a
    caller hands :meth:`~qustody.policy.interfaces.PolicyEngine.authorize` a
    context it cannot express in Cedar. It is a configuration or programming
    error, never a denial: a denial is a :class:`~qustody.domain.models.Decision`.
    """

    code = "policy_error"
    status = 500
    title = "Policy error"


class InvalidPolicy(InvalidRequest):
    """A tenant's policy text that Qustody refuses to store (``422``).

    ``detail`` names the policy (its ``@id``) and its line; ``extra`` carries
    ``policy_id`` and ``line`` where known.
    """

    code = "invalid_policy"
    title = "Invalid policy"

    @classmethod
    def of(cls, error: PolicyError) -> InvalidPolicy:
        return cls(error.detail, field="text", extra=error.extra)


class ApprovalRequired(QustodyError):
    """The action is held for approval by an ``@approvals`` policy (``403``).

    ``extra`` carries ``policy_ids``, ``approvers`` (N) and ``ttl_seconds``;
    ``detail`` says how to ask for one.
    """

    code = "approval_required"
    status = 403
    title = "Approval required"


class ApprovalInvalid(QustodyError):
    """A ``Qustody-Approval`` that cannot be spent on this request (``403``)."""

    code = "approval_invalid"
    status = 403
    title = "Approval not usable"
