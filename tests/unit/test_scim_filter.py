"""SCIM filters (RFC 7644 section 3.4.2.2): what is translated, what is refused.

The results of translated filters are checked against scim2-models' own
evaluator on real databases in tests/integration/test_scim.py; here the
syntax and the refusals.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Column, MetaData, String, Table, select
from sqlalchemy.dialects import postgresql, sqlite

from qustody.identity.scim_errors import InvalidFilter
from qustody.identity.scim_filter import (
    MAX_FILTER_LENGTH,
    Attribute,
    MultiValued,
    Translator,
    parse,
)

# The example filters of RFC 7644 section 3.4.2.2, verbatim.
RFC_EXAMPLES = [
    'userName eq "bjensen"',
    'name.familyName co "O\'Malley"',
    'userName sw "J"',
    'urn:ietf:params:scim:schemas:core:2.0:User:userName sw "J"',
    "title pr",
    'meta.lastModified gt "2011-05-13T04:42:34Z"',
    'meta.lastModified ge "2011-05-13T04:42:34Z"',
    'meta.lastModified lt "2011-05-13T04:42:34Z"',
    'meta.lastModified le "2011-05-13T04:42:34Z"',
    'title pr and userType eq "Employee"',
    'title pr or userType eq "Intern"',
    'schemas eq "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"',
    'userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")',
    'userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")',
    'userType eq "Employee" and (emails.type eq "work")',
    'userType eq "Employee" and emails[type eq "work" and value co "@example.com"]',
    'emails[type eq "work" and value co "@example.com"] or '
    'ims[type eq "xmpp" and value co "@foo.com"]',
]

# Those of them Qustody translates (it stores no title, userType, name or ims).
TRANSLATED = [
    'userName eq "bjensen"',
    'userName sw "J"',
    'urn:ietf:params:scim:schemas:core:2.0:User:userName sw "J"',
    'meta.lastModified gt "2011-05-13T04:42:34Z"',
    'meta.lastModified ge "2011-05-13T04:42:34Z"',
    'meta.lastModified lt "2011-05-13T04:42:34Z"',
    'meta.lastModified le "2011-05-13T04:42:34Z"',
]

_TABLE = Table(
    "people",
    MetaData(),
    Column("id", String),
    Column("name", String),
    Column("email", String),
    Column("external_id", String),
    Column("modified", String),
)
_MEMBERS = Table("members", MetaData(), Column("person", String), Column("value", String))

TRANSLATOR = Translator(
    {
        "id": Attribute(_TABLE.c.id, case_exact=True),
        "externalid": Attribute(_TABLE.c.external_id, case_exact=True),
        "username": Attribute(_TABLE.c.name),
        "emails": MultiValued({"value": Attribute(_TABLE.c.email)}),
        "meta.lastmodified": Attribute(_TABLE.c.modified, kind="datetime"),
        "members": MultiValued(
            {"value": Attribute(_MEMBERS.c.value, case_exact=True)},
            lambda condition: (
                select(_MEMBERS.c.person)
                .where(_MEMBERS.c.person == _TABLE.c.id, condition)
                .exists()
            ),
        ),
    },
    core_schema="urn:ietf:params:scim:schemas:core:2.0:User",
)


def _sql(text: str, dialect: object = None) -> str:
    query = select(_TABLE.c.id).where(TRANSLATOR.condition(text))
    return str(query.compile(dialect=dialect or sqlite.dialect()))


@pytest.mark.parametrize("text", RFC_EXAMPLES)
def test_every_rfc_example_parses(text: str) -> None:
    assert parse(text) is not None


@pytest.mark.parametrize("text", TRANSLATED)
def test_rfc_examples_on_stored_attributes_translate(text: str) -> None:
    assert "WHERE" in _sql(text)


@pytest.mark.parametrize(
    "text",
    [
        'userName eq "bjensen" and',
        "userName eq bjensen",
        'userName xx "a"',
        'emails[type eq "work"',
        '(userName eq "a"',
        "",
    ],
)
def test_malformed_filters_are_invalid_filter(text: str) -> None:
    with pytest.raises(InvalidFilter) as caught:
        TRANSLATOR.condition(text)
    assert caught.value.scim_type == "invalidFilter"
    assert caught.value.status == 400
    assert "RFC 7644" in caught.value.detail


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("title pr", "title"),
        ('name.familyName co "x"', "name.familyName"),
        ('emails.type eq "work"', "emails.type"),
        ('urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "1"', ""),
        ('userName eq "a" or nickName eq "b"', "nickName"),
        ('userName[value eq "a"]', "single-valued"),
        ('members[value eq "a"].display eq "x"', "members.display"),
    ],
)
def test_attributes_it_does_not_store_are_refused(text: str, names: str) -> None:
    with pytest.raises(InvalidFilter) as caught:
        TRANSLATOR.condition(text)
    assert names in caught.value.detail


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ('userName gt "a"', "eq, ne, co, sw, ew or pr"),
        ('id co "usr_"', "eq, ne or pr"),
        ('externalId sw "x"', "eq, ne or pr"),
        ("userName eq 42", "quoted string"),
        ('meta.lastModified gt "yesterday"', "RFC 3339"),
        ('meta.lastModified co "2011"', "eq, ne, gt"),
        ("userName gt null", "eq null"),
    ],
)
def test_operators_and_values_an_attribute_cannot_take_are_refused(text: str, hint: str) -> None:
    with pytest.raises(InvalidFilter) as caught:
        TRANSLATOR.condition(text)
    assert hint in caught.value.detail


def test_overlong_filters_are_refused_before_parsing() -> None:
    with pytest.raises(InvalidFilter) as caught:
        parse('userName eq "' + "a" * MAX_FILTER_LENGTH + '"')
    assert str(MAX_FILTER_LENGTH) in caught.value.detail


def test_values_are_bound_parameters_never_sql_text() -> None:
    hostile = "x' OR '1'='1"
    sql = _sql(f'userName eq "{hostile}"')
    assert hostile not in sql
    assert "'1'='1" not in sql
    # LIKE wildcards in a value match themselves only (escaped).
    compiled = (
        select(_TABLE.c.id)
        .where(TRANSLATOR.condition('userName co "50%_off"'))
        .compile(dialect=postgresql.dialect())
    )
    assert "ESCAPE" in str(compiled)
    assert any("50/%/_off" in str(v) for v in compiled.params.values())


def test_case_insensitive_attributes_compare_lowered() -> None:
    sql = _sql('userName eq "BJensen"')
    assert "lower(people.name)" in sql
    assert "lower" not in _sql('externalId eq "BJensen"')


def test_a_multi_valued_attribute_becomes_an_exists() -> None:
    sql = _sql('members[value eq "usr_1"]')
    assert "EXISTS" in sql
    # ne on a multi-valued attribute: no value equals the operand.
    assert "NOT (EXISTS" in _sql('members.value ne "usr_1"')
