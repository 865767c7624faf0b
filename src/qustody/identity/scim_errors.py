"""SCIM refusals.

Each has a stable ``code``, like every Qustody error, and the ``scim_type``
keyword of RFC 7644 section 3.12 where the RFC defines one for its status
(the 400s and ``uniqueness`` for 409): an identity provider acts on that
keyword. The SCIM routes render them as SCIM error messages; the stable code
travels in the ``Qustody-Error-Code`` header, since SCIM clients refuse
members the RFC does not define in an error body.
"""

from __future__ import annotations

from typing import ClassVar

from qustody.domain.errors import Conflict, QustodyError


class ScimError(QustodyError):
    """A request the SCIM protocol refuses with 400 and a ``scimType``."""

    code = "scim_invalid_value"
    status = 400
    title = "Invalid SCIM value"
    scim_type: ClassVar[str | None] = "invalidValue"


class InvalidFilter(ScimError):
    code = "scim_invalid_filter"
    title = "Unsupported or malformed SCIM filter"
    scim_type = "invalidFilter"


class InvalidSyntax(ScimError):
    code = "scim_invalid_syntax"
    title = "Malformed SCIM request"
    scim_type = "invalidSyntax"


class InvalidPath(ScimError):
    code = "scim_invalid_path"
    title = "Invalid SCIM attribute path"
    scim_type = "invalidPath"


class NoTarget(ScimError):
    code = "scim_no_target"
    title = "SCIM path matches nothing"
    scim_type = "noTarget"


class MutabilityViolation(ScimError):
    code = "scim_mutability"
    title = "Attribute cannot be changed"
    scim_type = "mutability"


class TooMany(ScimError):
    code = "scim_too_many"
    title = "Too many results"
    scim_type = "tooMany"


class Uniqueness(Conflict):
    code = "scim_uniqueness"
    title = "Value already in use"
    scim_type: ClassVar[str | None] = "uniqueness"


class VersionMismatch(QustodyError):
    """``If-Match`` named a version the resource no longer has (RFC 7644 section 3.14)."""

    code = "scim_version_mismatch"
    status = 412
    title = "Resource changed"


class NotSupported(QustodyError):
    """A SCIM feature Qustody declares unsupported (bulk, root search, /Me)."""

    code = "scim_not_supported"
    status = 501
    title = "Not supported"
