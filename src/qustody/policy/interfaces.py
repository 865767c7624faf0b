"""What the rest of Qustody asks of the policy module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from qustody.domain.models import Decision, Principal, Resource
from qustody.domain.vocabulary import Action


class PolicyEngine(Protocol):
    """Decides whether a principal may perform an action on a resource.

    Implementations deny by default: with no policy that permits, or with any
    doubt (an unusable resource description, a forbid that could not be
    evaluated), the answer is a denial. They never raise for a denial; they
    raise :class:`~qustody.policy.errors.PolicyError` only when the caller hands
    them something they cannot evaluate at all.
    """

    def authorize(
        self,
        principal: Principal,
        action: Action,
        resource: Resource,
        *,
        context: Mapping[str, object] | None = None,
    ) -> Decision:
        """Decide ``action`` by ``principal`` on ``resource``.

        ``context`` adds request facts (environment, region, backend, time) to
        those the engine derives itself from the principal and the resource.
        The returned :class:`Decision` names the policies that decided it.
        """
        ...
