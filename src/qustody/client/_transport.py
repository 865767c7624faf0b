"""What the :class:`~qustody.client.Client` method groups call: the client's
own request methods, declared once for the type checker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx


class Transport:
    """Base of the method groups mixed into :class:`~qustody.client.Client`,
    which provides these two methods."""

    if TYPE_CHECKING:

        def _json(
            self,
            method: str,
            path: str,
            *,
            json: dict[str, Any] | None = None,
            params: dict[str, str | int] | None = None,
            extra_timeout: float = 0.0,
        ) -> object: ...

        def _request(
            self,
            method: str,
            path: str,
            *,
            json: dict[str, Any] | None = None,
            params: dict[str, str | int] | None = None,
            extra_timeout: float = 0.0,
        ) -> httpx.Response: ...
