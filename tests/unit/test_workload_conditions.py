"""Trust rule conditions: exact values, lists, and the documented glob."""

from __future__ import annotations

import pytest

from qustody.domain.errors import InvalidRequest
from qustody.identity.workload import (
    Condition,
    conditions_json,
    glob_matches,
    parse_conditions,
)


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("refs/heads/release/*", "refs/heads/release/2.1", True),
        ("refs/heads/release/*", "refs/heads/release/", True),  # '*' may match nothing
        ("refs/heads/release/*", "refs/heads/release/2.1/hotfix", False),  # not across '/'
        ("refs/heads/release/*", "refs/heads/main", False),
        ("refs/heads/release/*", "xrefs/heads/release/1", False),  # anchored at the start
        ("refs/heads/release/*", "refs/heads/release", False),
        ("refs/heads/**", "refs/heads/a/b/c", True),  # '**' crosses '/'
        ("refs/heads/**", "refs/heads/", True),
        ("refs/tags/v*", "refs/tags/v1.2.3", True),
        ("refs/tags/v*", "refs/tags/1.2.3", False),
        ("repo:acme/*:environment:prod", "repo:acme/app:environment:prod", True),
        ("repo:acme/*:environment:prod", "repo:acme/app:environment:prod-eu", False),
        ("repo:acme/*:environment:prod", "repo:acme/a/b:environment:prod", False),
        ("*-prod", "eu-prod", True),
        ("a.b", "axb", False),  # '.' is literal
        ("a?b", "axb", False),  # '?' is literal
        ("a?b", "a?b", True),
        ("[ab]", "a", False),  # no character classes
        ("[ab]", "[ab]", True),
        ("a\\*", "a\\xyz", True),  # no escapes: '\\' is literal, '*' still a wildcard
        ("main", "main", True),
        ("main", "Main", False),  # case-sensitive
        ("x*y*z", "x-y-z", True),
        ("x*y*z", "xyz", True),
        ("x*y*z", "x/y/z", False),
        ("line*", "line\nbreak", True),  # '*' takes any character but '/'
    ],
)
def test_glob(pattern: str, value: str, matches: bool) -> None:
    assert glob_matches(pattern, value) is matches


def test_conditions_parse_each_form_and_round_trip() -> None:
    raw = {
        "repository": "acme/app",
        "environment": ["prod", "staging"],
        "ref": {"glob": "refs/heads/release/*"},
        "workflow": {"glob": ["ci-*", "deploy-*"]},
    }
    parsed = parse_conditions(raw)
    assert parsed == (
        Condition("repository", ("acme/app",)),
        Condition("environment", ("prod", "staging")),
        Condition("ref", ("refs/heads/release/*",), glob=True),
        Condition("workflow", ("ci-*", "deploy-*"), glob=True),
    )
    assert conditions_json(parsed) == raw
    claims = {
        "repository": "acme/app",
        "environment": "staging",
        "ref": "refs/heads/release/3",
        "workflow": "deploy-eu",
    }
    assert all(c.holds(claims) for c in parsed)


def test_an_exact_value_is_never_a_glob() -> None:
    (exact,) = parse_conditions({"ref": "refs/heads/*"})
    assert not exact.holds({"ref": "refs/heads/main"})
    assert exact.holds({"ref": "refs/heads/*"})


@pytest.mark.parametrize(
    "claims",
    [{}, {"repository": None}, {"repository": 42}, {"repository": ["acme/app"]}, {"x": "acme/app"}],
)
def test_an_absent_or_non_string_claim_fails(claims: dict[str, object]) -> None:
    (condition,) = parse_conditions({"repository": ["acme/app", "42"]})
    assert not condition.holds(claims)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({}, "conditions"),
        ([], "conditions"),
        ("repository=acme/app", "conditions"),
        ({f"c{i}": "v" for i in range(17)}, "conditions"),
        ({"bad name": "v"}, "conditions"),
        ({"iss": "x"}, "conditions.iss"),
        ({"aud": "x"}, "conditions.aud"),
        ({"exp": "x"}, "conditions.exp"),
        ({"ref": ""}, "conditions.ref"),
        ({"ref": []}, "conditions.ref"),
        ({"ref": [1]}, "conditions.ref"),
        ({"ref": True}, "conditions.ref"),
        ({"ref": "x" * 257}, "conditions.ref"),
        ({"ref": ["v"] * 33}, "conditions.ref"),
        ({"ref": {"glob": "*"}}, "conditions.ref"),
        ({"ref": {"glob": "**"}}, "conditions.ref"),
        ({"ref": {"glob": ["refs/*", "*"]}}, "conditions.ref"),
        ({"ref": {"regex": ".*"}}, "conditions.ref"),
        ({"ref": {"glob": "a*", "extra": 1}}, "conditions.ref"),
    ],
)
def test_bad_conditions_are_refused_naming_the_field(raw: object, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_conditions(raw)
    assert caught.value.field == field
