"""Route declaration: every authenticated route names its action.

``secured(action)`` goes into a route's ``openapi_extra``: it documents the
Cedar action in the OpenAPI document and lets a test walk the route table
and refuse any route that lacks one.
"""

from __future__ import annotations

from typing import Any

from qustody.domain.vocabulary import Action

ACTION_KEY = "x-qustody-action"


def secured(action: Action) -> dict[str, Any]:
    return {ACTION_KEY: action.value, "security": [{"bearer": []}]}


PUBLIC: dict[str, Any] = {ACTION_KEY: None, "security": []}
