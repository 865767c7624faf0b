"""SCIM filters (RFC 7644 section 3.4.2.2) as SQL conditions.

scim2-models parses a filter: its grammar is the RFC's ABNF with the errata
applied, and a malformed filter never reaches this module. What is here is
the translation of the parsed tree into a SQLAlchemy condition over the
columns a resource type maps its attributes to. Anything it does not
translate (an attribute it does not map, an operator the attribute's type
cannot take) is refused with ``invalidFilter``; nothing is silently dropped,
since a dropped condition would widen the result.

The semantics follow the RFC and scim2-models' own evaluator, which the
tests use as the reference: string comparisons ignore case unless the
attribute is ``caseExact``; a comparison with a missing value is false,
except ``ne``, which holds; ``pr`` needs a non-empty value; a condition on a
multi-valued attribute holds when one of its values meets it (``ne``: when
none equals the operand). Each comparison yields true or false, never SQL's
NULL, so ``not`` negates exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from scim2_models import InvalidFilterException, ScimFilter
from scim2_models.path import (
    AttrPath,
    CompareOperator,
    Comparison,
    FilterNode,
    LogicalExpr,
    LogicalOperator,
    Not,
    Present,
    ValuePath,
)
from sqlalchemy import ColumnElement, and_, func, not_, or_, true

from qustody.identity.scim_errors import InvalidFilter

Kind = Literal["string", "boolean", "datetime"]
#: Longest filter accepted (an identity provider sends a few dozen characters).
MAX_FILTER_LENGTH = 2048

_STRING_MATCH = frozenset({CompareOperator.co, CompareOperator.sw, CompareOperator.ew})
_ORDERING = frozenset(
    {CompareOperator.gt, CompareOperator.ge, CompareOperator.lt, CompareOperator.le}
)


@dataclass(frozen=True, slots=True)
class Attribute:
    """A single-valued attribute stored in one column."""

    column: ColumnElement[Any]
    kind: Kind = "string"
    #: Compared as stored; otherwise both sides are lower-cased. Case-exact
    #: strings take ``eq``, ``ne`` and ``pr`` only.
    case_exact: bool = False


def _as_is(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    return condition


@dataclass(frozen=True, slots=True)
class MultiValued:
    """A multi-valued attribute: a condition on its sub-attributes holds when
    one of its values meets it. ``within`` turns a condition on the values
    into one on the resource (an ``EXISTS`` over a membership table)."""

    sub_attributes: Mapping[str, Attribute]
    within: Callable[[ColumnElement[bool]], ColumnElement[bool]] = field(default=_as_is)


Attributes = Mapping[str, Attribute | MultiValued]


def parse(text: str) -> FilterNode:
    """The syntax tree of a filter, or ``invalidFilter``."""
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidFilter(
            f"the filter is {len(text)} characters long; at most {MAX_FILTER_LENGTH} are accepted.",
            field="filter",
        )
    try:
        return ScimFilter(text).ast
    except InvalidFilterException as exc:
        raise InvalidFilter(
            f"the filter is not valid SCIM filter syntax ({exc.detail}); see RFC 7644 "
            "section 3.4.2.2.",
            field="filter",
        ) from None


class Translator:
    """Turns parsed filters into conditions over one resource type's columns.

    ``attributes`` maps lower-case attribute names (``username``,
    ``meta.lastmodified``, ``emails``) to their storage; ``core_schema`` is the
    resource's schema URN, which may prefix a name; ``extensions`` maps an
    extension URN to the attributes it adds.
    """

    def __init__(
        self,
        attributes: Attributes,
        *,
        core_schema: str,
        extensions: Mapping[str, Attributes] | None = None,
    ) -> None:
        self._attributes = attributes
        self._core = core_schema.lower()
        self._extensions = {urn.lower(): attrs for urn, attrs in (extensions or {}).items()}

    def condition(self, text: str) -> ColumnElement[bool]:
        return self._node(parse(text), self._attributes, "")

    # -- the tree -------------------------------------------------------------------
    # ``within`` names the multi-valued attribute a value selection is inside
    # (``members`` in ``members[value eq "x"]``), for messages.

    def _node(self, node: FilterNode, scope: Attributes, within: str) -> ColumnElement[bool]:
        if isinstance(node, LogicalExpr):
            terms = [self._node(term, scope, within) for term in node.terms]
            return and_(*terms) if node.op is LogicalOperator.and_ else or_(*terms)
        if isinstance(node, Not):
            return not_(self._node(node.expr, scope, within))
        if isinstance(node, Comparison):
            return self._comparison(node, scope, within)
        if isinstance(node, Present):
            return self._present(node.attr_path, scope, within)
        if isinstance(node, ValuePath):
            return self._value_path(node, scope, within)
        raise InvalidFilter(  # pragma: no cover - the grammar has no other nodes
            f"the filter expression {str(node)[:80]!r} is not supported.", field="filter"
        )

    def _comparison(self, node: Comparison, scope: Attributes, within: str) -> ColumnElement[bool]:
        target = self._lookup(node.attr_path, scope, within)
        name = _name(node.attr_path, within)
        if isinstance(target, Attribute):
            return _compare(target, node.op, node.value, name)
        value = target.sub_attributes.get("value")
        if value is None:  # pragma: no cover - every mapped multi-valued attribute has one
            raise _unsupported(name)
        return _on_values(target, _compare(value, node.op, node.value, name), node.op)

    def _present(self, path: AttrPath, scope: Attributes, within: str) -> ColumnElement[bool]:
        target = self._lookup(path, scope, within)
        if isinstance(target, Attribute):
            return _present(target)
        value = target.sub_attributes.get("value")
        return target.within(true() if value is None else _present(value))

    def _value_path(self, node: ValuePath, scope: Attributes, within: str) -> ColumnElement[bool]:
        target = self._lookup(node.attr_path, scope, within)
        if not isinstance(target, MultiValued):
            raise InvalidFilter(
                f"{node.attr_path} is single-valued; a value selection "
                f"({str(node)[:60]!r}) applies to multi-valued attributes only.",
                field="filter",
            )
        inner = self._node(node.val_filter, target.sub_attributes, str(node.attr_path))
        return target.within(inner)

    # -- attributes -----------------------------------------------------------------

    def _lookup(self, path: AttrPath, scope: Attributes, within: str) -> Attribute | MultiValued:
        attributes = scope
        if path.uri is not None:
            urn = path.uri.lower()
            if urn in self._extensions and not within:
                attributes = self._extensions[urn]
            elif urn != self._core or within:
                raise _unsupported(_name(path, within))
        name = path.attr.lower()
        if path.sub_attr is not None:
            dotted = attributes.get(f"{name}.{path.sub_attr.lower()}")
            if dotted is not None:
                return dotted
            parent = attributes.get(name)
            if isinstance(parent, MultiValued):
                sub = parent.sub_attributes.get(path.sub_attr.lower())
                if sub is not None:
                    return MultiValued({"value": sub}, parent.within)
            raise _unsupported(_name(path, within))
        found = attributes.get(name)
        if found is None:
            raise _unsupported(_name(path, within))
        return found


def _name(path: AttrPath, within: str) -> str:
    return f"{within}.{path}" if within else str(path)


def _unsupported(path: str) -> InvalidFilter:
    return InvalidFilter(
        f"filtering on {path[:80]!r} is not supported; see the attributes this "
        "resource type declares at /scim/v2/Schemas.",
        field="filter",
    )


def _on_values(
    target: MultiValued, condition: ColumnElement[bool], op: CompareOperator
) -> ColumnElement[bool]:
    """A comparison on the values of a multi-valued attribute: one value meets
    it; for ``ne``, none equals the operand."""
    if op is CompareOperator.ne:
        # The "ne" comparison above holds for a missing value; here it must
        # hold for every value, which is: no value is equal.
        return not_(target.within(not_(condition)))
    return target.within(condition)


def _present(attribute: Attribute) -> ColumnElement[bool]:
    column = attribute.column
    if attribute.kind == "string":
        return and_(column.is_not(None), column != "")
    return column.is_not(None)


def _compare(
    attribute: Attribute, op: CompareOperator, value: object, path: str
) -> ColumnElement[bool]:
    column = attribute.column
    if value is None:
        # "attr eq null" asks for a missing value, "ne null" for a present one.
        if op is CompareOperator.eq:
            return column.is_(None)
        if op is CompareOperator.ne:
            return column.is_not(None)
        raise InvalidFilter(
            f"{path} {op.value} null is not a comparison; use 'pr' or 'eq null'.",
            field="filter",
        )
    operand: Any
    if attribute.kind == "string":
        operand = _string(value, path)
        if op in _ORDERING or (attribute.case_exact and op in _STRING_MATCH):
            raise InvalidFilter(
                f"{path} does not take the {op.value!r} operator; use "
                f"{'eq, ne or pr' if attribute.case_exact else 'eq, ne, co, sw, ew or pr'}.",
                field="filter",
            )
        if not attribute.case_exact:
            column, operand = func.lower(column), operand.lower()
    elif attribute.kind == "boolean":
        if not isinstance(value, bool) or op not in (CompareOperator.eq, CompareOperator.ne):
            raise InvalidFilter(
                f"{path} is a boolean; compare it with 'eq true', 'eq false' or 'ne'.",
                field="filter",
            )
        operand = value
    else:
        if op in _STRING_MATCH:
            raise InvalidFilter(
                f"{path} is a date and time; use eq, ne, gt, ge, lt or le.", field="filter"
            )
        operand = _datetime(value, path)
    present = attribute.column.is_not(None)
    if op is CompareOperator.eq:
        return and_(present, column == operand)
    if op is CompareOperator.ne:
        return or_(attribute.column.is_(None), column != operand)
    if op is CompareOperator.co:
        return and_(present, column.contains(operand, autoescape=True))
    if op is CompareOperator.sw:
        return and_(present, column.startswith(operand, autoescape=True))
    if op is CompareOperator.ew:
        return and_(present, column.endswith(operand, autoescape=True))
    if op is CompareOperator.gt:
        return and_(present, column > operand)
    if op is CompareOperator.ge:
        return and_(present, column >= operand)
    if op is CompareOperator.lt:
        return and_(present, column < operand)
    return and_(present, column <= operand)  # le, the last operator


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise InvalidFilter(
            f"{path} is a string; compare it with a quoted string, not {value!r}.",
            field="filter",
        )
    return value


def _datetime(value: object, path: str) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            # Stored instants are UTC (SQLite keeps them without an offset).
            aware = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
            return aware.astimezone(UTC)
    raise InvalidFilter(
        f"{path} is a date and time; compare it with a quoted RFC 3339 time such as "
        '"2025-01-31T12:00:00Z".',
        field="filter",
    )
