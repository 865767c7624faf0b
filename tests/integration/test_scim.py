"""SCIM provisioning on real SQLite and PostgreSQL: filters checked against
scim2-models' own evaluator, deprovisioning, group-granted roles, ETags,
tenant isolation and audit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from scim2_models import PatchOp, ScimFilter, SearchRequest
from sqlalchemy import select

from qustody.domain.errors import Forbidden, NotFound
from qustody.domain.models import Principal
from qustody.domain.vocabulary import Role
from qustody.identity.errors import RevokedToken
from qustody.identity.scim import TOMBSTONE, ScimService
from qustody.identity.scim_errors import (
    InvalidFilter,
    MutabilityViolation,
    ScimError,
    Uniqueness,
    VersionMismatch,
)
from qustody.identity.scim_resources import (
    GRANT_SCHEMA,
    EmailAddress,
    Grant,
    GroupResource,
    Member,
    User,
    parse_patch,
    parse_query,
)
from qustody.storage import models as m
from support import Tenancy, ctx


def _scim(tenancy: Tenancy) -> ScimService:
    return tenancy.runtime.services.scim


def _user(tenancy: Tenancy, name: str, caller: Principal | None = None, **fields: Any) -> User:
    return _scim(tenancy).create_user(
        caller or tenancy.tenant_admin, ctx(), User(user_name=name, **fields)
    )


def _group(
    tenancy: Tenancy,
    name: str,
    members: list[str] = (),  # type: ignore[assignment]
    role: str | None = None,
    project: str | None = None,
    caller: Principal | None = None,
) -> GroupResource:
    group = GroupResource(
        display_name=name, members=[Member(value=member) for member in members] or None
    )
    if role is not None or project is not None:
        group[Grant] = Grant(role=role, project=project)
    return _scim(tenancy).create_group(caller or tenancy.tenant_admin, ctx(), group)


def _patch(model: Any, *operations: dict[str, Any]) -> PatchOp[Any]:
    return parse_patch(
        model,
        {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": list(operations),
        },
    )


def _query(model: Any, **params: Any) -> SearchRequest[Any]:
    return parse_query(model, params)


def _ids(resources: Any) -> set[str]:
    return {resource.id for resource in resources}


def _token_of(tenancy: Tenancy, user: User) -> str:
    return tenancy.runtime.services.admin.operator_token(str(user.user_name), "acme").token


# -- filters against an independent evaluator ------------------------------------------------


USER_FILTERS = [
    'userName eq "ALICE"',
    'userName ne "alice"',
    'userName co "o"',
    'userName sw "acme"',
    'userName ew "B"',
    'urn:ietf:params:scim:schemas:core:2.0:User:userName eq "carol"',
    "displayName pr",
    "not (displayName pr)",
    'displayName co "%_"',
    'displayName eq "alice smith"',
    "displayName eq null",
    'emails co "example"',
    'emails.value ew ".ORG"',
    'emails[value sw "alice"]',
    "emails pr",
    'emails ne "alice@example.com"',
    'externalId eq "EXT-1"',
    'externalId eq "ext-1"',
    'externalId ne "EXT-1"',
    "externalId pr",
    "active eq false",
    "active ne false",
    "active eq true and emails pr",
    'userName eq "alice" or userName eq "Bob"',
    'not (userName sw "acme") and (displayName pr or emails pr)',
    'meta.created gt "2000-01-01T00:00:00Z"',
    'meta.lastModified lt "2000-01-01T00:00:00Z"',
    'meta.lastModified ge "2000-01-01T00:00:00+02:00"',
]


def test_user_filters_select_what_scim2_models_evaluator_selects(tenancy: Tenancy) -> None:
    scim = _scim(tenancy)
    admin = tenancy.tenant_admin
    _user(
        tenancy,
        "alice",
        display_name="Alice Smith",
        emails=[EmailAddress(value="alice@example.com")],
        external_id="EXT-1",
    )
    _user(
        tenancy,
        "Bob",
        emails=[EmailAddress(value="bob@Example.ORG")],
        external_id="ext-2",
        active=False,
    )
    _user(tenancy, "carol", display_name="carol 50%_off")
    _user(tenancy, "globex-person", caller=tenancy.principal("globex-admin", "globex"))
    everyone = scim.list_users(admin, ctx(), _query(User)).resources
    assert "globex-person" not in {u.user_name for u in everyone}  # another tenant's
    assert len(everyone) == 6  # the three seeded principals and three created
    checked = 0
    for text in USER_FILTERS:
        expected = {u.id for u in everyone if ScimFilter[User](text).match(u)}
        found = scim.list_users(admin, ctx(), _query(User, filter=text)).resources
        assert _ids(found) == expected, text
        checked += bool(expected) and expected != _ids(everyone)
    assert checked >= 15  # most filters select some but not all


def test_group_filters_select_what_scim2_models_evaluator_selects(tenancy: Tenancy) -> None:
    scim = _scim(tenancy)
    admin = tenancy.tenant_admin
    alice, bob = _user(tenancy, "alice"), _user(tenancy, "bob")
    _group(tenancy, "Devs", [alice.id, bob.id], role="developer", project="research")
    _group(tenancy, "Admins", [alice.id], role="tenant-admin")
    _group(tenancy, "Empty")
    everyone = scim.list_groups(admin, ctx(), _query(GroupResource)).resources
    assert len(everyone) == 3
    filters = [
        'displayName eq "devs"',
        'displayName sw "A"',
        f'members[value eq "{alice.id}"]',
        f'members.value eq "{bob.id}"',
        f'members ne "{alice.id}"',
        "members pr",
        "not (members pr)",
        "externalId pr",
        f'{GRANT_SCHEMA}:role eq "developer"',
        f'{GRANT_SCHEMA}:role pr or displayName eq "empty"',
    ]
    for text in filters:
        expected = {g.id for g in everyone if ScimFilter[GroupResource](text).match(g)}
        found = scim.list_groups(admin, ctx(), _query(GroupResource, filter=text)).resources
        assert _ids(found) == expected, text


def test_unsupported_filters_are_refused_not_ignored(tenancy: Tenancy) -> None:
    scim = _scim(tenancy)
    for text in ('nickName eq "x"', "title pr", 'userName gt "a"', 'id co "usr"'):
        with pytest.raises((InvalidFilter, ScimError)) as caught:
            scim.list_users(tenancy.tenant_admin, ctx(), _query(User, filter=text))
        assert caught.value.scim_type == "invalidFilter", text


def test_pages_sort_and_count(tenancy: Tenancy) -> None:
    scim = _scim(tenancy)
    admin = tenancy.tenant_admin
    for name in ("u-c", "U-a", "u-b"):
        _user(tenancy, name)
    query = _query(User, filter='userName sw "u-"', sortBy="userName", count=2)
    page = scim.list_users(admin, ctx(), query)
    assert page.total == 3
    assert [u.user_name for u in page.resources] == ["U-a", "u-b"]
    rest = scim.list_users(
        admin, ctx(), _query(User, filter='userName sw "u-"', sortBy="userName", startIndex=3)
    )
    assert [u.user_name for u in rest.resources] == ["u-c"]
    descending = scim.list_users(
        admin,
        ctx(),
        _query(User, filter='userName sw "u-"', sortBy="userName", sortOrder="descending"),
    )
    assert [u.user_name for u in descending.resources] == ["u-c", "u-b", "U-a"]
    only_total = scim.list_users(admin, ctx(), _query(User, count=0))
    assert only_total.total >= 6
    assert only_total.resources == []
    with pytest.raises(ScimError) as caught:
        scim.list_groups(admin, ctx(), _query(GroupResource, sortBy="members"))
    assert caught.value.field == "sortBy"


# -- users ---------------------------------------------------------------------------


def test_user_round_trip_keeps_what_qustody_stores(tenancy: Tenancy) -> None:
    scim = _scim(tenancy)
    admin = tenancy.tenant_admin
    created = _user(
        tenancy,
        "bjensen",
        display_name="Babs Jensen",
        external_id="00u1",
        emails=[
            EmailAddress(value="home@example.com"),
            EmailAddress(value="work@example.com", primary=True),
        ],
    )
    assert created.active is True
    assert created.emails == [EmailAddress(value="work@example.com")]  # the primary one
    assert created.meta is not None
    assert created.meta.version == 'W/"1"'
    assert str(created.meta.location).endswith(f"/scim/v2/Users/{created.id}")
    fetched = scim.get_user(admin, ctx(), str(created.id))
    assert fetched.model_dump() == created.model_dump()
    replaced = scim.replace_user(
        admin, ctx(), str(created.id), User(user_name="bjensen2", display_name=None), 'W/"1"'
    )
    assert replaced.user_name == "bjensen2"
    assert replaced.display_name is None
    assert replaced.emails is None
    assert replaced.active is True  # left out of a PUT: unchanged
    assert replaced.meta is not None
    assert replaced.meta.version == 'W/"2"'


def test_user_names_are_unique_in_the_tenant_ignoring_case(tenancy: Tenancy) -> None:
    _user(tenancy, "Dana")
    with pytest.raises(Uniqueness) as caught:
        _user(tenancy, "dana")
    assert caught.value.status == 409
    assert caught.value.scim_type == "uniqueness"
    with pytest.raises(Uniqueness):
        _user(tenancy, "ACME-DEV")  # a principal the tenant admin added
    # Another tenant may use the name.
    _user(tenancy, "dana", caller=tenancy.principal("globex-admin", "globex"))


def test_if_match_names_the_current_version_or_412(tenancy: Tenancy) -> None:
    scim = _scim(tenancy)
    admin = tenancy.tenant_admin
    user = _user(tenancy, "eve")
    patch = _patch(User, {"op": "replace", "path": "displayName", "value": "Eve"})
    with pytest.raises(VersionMismatch) as caught:
        scim.patch_user(admin, ctx(), str(user.id), patch, 'W/"7"')
    assert caught.value.status == 412
    assert 'W/"1"' in caught.value.detail
    patched = scim.patch_user(admin, ctx(), str(user.id), patch, 'W/"0", W/"1"')
    assert patched.display_name == "Eve"
    assert scim.patch_user(admin, ctx(), str(user.id), patch, "*").display_name == "Eve"
    with pytest.raises(VersionMismatch):
        scim.delete_user(admin, ctx(), str(user.id), 'W/"1"')


def test_bad_values_are_scim_errors_with_the_field(tenancy: Tenancy) -> None:
    scim = _scim(tenancy)
    admin = tenancy.tenant_admin
    for fields, field in (
        ({"user_name": "has space"}, "userName"),
        ({"user_name": "ok", "emails": [EmailAddress(value="not-an-address")]}, "emails"),
        ({"user_name": "ok", "display_name": "x" * 257}, "displayName"),
    ):
        with pytest.raises(ScimError) as caught:
            scim.create_user(admin, ctx(), User(**fields))
        assert caught.value.scim_type == "invalidValue"
        assert caught.value.field == field
    user = _user(tenancy, "frank")
    with pytest.raises(MutabilityViolation):
        scim.patch_user(
            admin, ctx(), str(user.id), _patch(User, {"op": "remove", "path": "active"}), None
        )


# -- deprovisioning ------------------------------------------------------------------


def test_deactivating_a_user_cuts_it_off_at_once(tenancy: Tenancy) -> None:
    services = tenancy.runtime.services
    scim, admin = services.scim, tenancy.tenant_admin
    user = _user(tenancy, "grace")
    services.admin.add_member(
        admin, ctx(), principal_name="grace", role=Role.DEVELOPER, project_ref="research"
    )
    group = _group(tenancy, "Graces", [str(user.id)], role="viewer", project="research")
    token = _token_of(tenancy, user)
    key = services.api_keys.create(
        admin, ctx(), principal_name="grace", name="laptop", scopes=None, expires_in_days=30
    )
    assert services.tokens.authenticate(token).roles_for(tenancy.project_id)  # type: ignore[arg-type]
    services.api_keys.authenticate(key.key)

    patched = scim.patch_user(
        admin,
        ctx(),
        str(user.id),
        _patch(User, {"op": "replace", "value": {"active": False}}),
        None,
    )
    assert patched.active is False
    # The token issued before, on its very next use; and the API key.
    with pytest.raises(RevokedToken):
        services.tokens.authenticate(token)
    with pytest.raises(RevokedToken):
        services.api_keys.authenticate(key.key)
    with services.db.read() as session:
        principal = session.get(m.Principal, str(user.id))
        assert principal is not None
        assert principal.active is False
        assert principal.tokens_not_before is not None
        assert (
            session.scalars(select(m.Membership).where(m.Membership.principal_id == user.id)).all()
            == []
        )
        assert (
            session.scalars(
                select(m.ScimGroupMember).where(m.ScimGroupMember.principal_id == user.id)
            ).all()
            == []
        )
        revoked = session.scalars(select(m.ApiKey).where(m.ApiKey.principal_id == user.id)).one()
        assert revoked.revoked_at is not None
    # The group lost its member, and says so in its version.
    after = scim.get_group(admin, ctx(), str(group.id))
    assert after.members is None
    assert after.meta is not None
    assert after.meta.version == 'W/"2"'
    # Reactivated: the old token stays revoked and no role comes back by itself.
    scim.patch_user(
        admin,
        ctx(),
        str(user.id),
        _patch(User, {"op": "replace", "path": "active", "value": True}),
        None,
    )
    with pytest.raises(RevokedToken):
        services.tokens.authenticate(token)
    fresh = services.tokens.authenticate(_token_of(tenancy, user))
    assert fresh.project_roles == ()
    assert fresh.tenant_roles == frozenset()


def test_deleting_a_user_keeps_a_tombstone_without_personal_data(tenancy: Tenancy) -> None:
    services = tenancy.runtime.services
    scim, admin = services.scim, tenancy.tenant_admin
    user = _user(
        tenancy,
        "heidi",
        display_name="Heidi Klum",
        external_id="idp-heidi",
        emails=[EmailAddress(value="heidi@example.com")],
    )
    token = _token_of(tenancy, user)
    scim.delete_user(admin, ctx(), str(user.id), None)
    with pytest.raises(RevokedToken):
        services.tokens.authenticate(token)
    with pytest.raises(NotFound):
        scim.get_user(admin, ctx(), str(user.id))
    with pytest.raises(NotFound):
        scim.delete_user(admin, ctx(), str(user.id), None)
    with services.db.read() as session:
        row = session.get(m.Principal, str(user.id))
        assert row is not None  # kept for the audit log
        assert row.name == f"{TOMBSTONE}{user.id}"
        assert (row.active, row.display_name, row.email, row.external_id) == (
            False,
            None,
            None,
            None,
        )
    # The identity provider may create the user again.
    again = _user(tenancy, "heidi")
    assert again.id != user.id


def test_a_principal_cannot_deprovision_itself(tenancy: Tenancy) -> None:
    scim = _scim(tenancy)
    admin = tenancy.tenant_admin
    with pytest.raises(MutabilityViolation):
        scim.delete_user(admin, ctx(), admin.id, None)
    with pytest.raises(MutabilityViolation):
        scim.patch_user(
            admin,
            ctx(),
            admin.id,
            _patch(User, {"op": "replace", "path": "active", "value": False}),
            None,
        )


# -- groups grant roles --------------------------------------------------------------


def test_a_group_grants_its_role_while_the_user_is_a_member(tenancy: Tenancy) -> None:
    services = tenancy.runtime.services
    scim, admin = services.scim, tenancy.tenant_admin
    user = _user(tenancy, "ivan")
    token = _token_of(tenancy, user)
    project = tenancy.project_id
    assert services.tokens.authenticate(token).roles_for(project) == frozenset()  # type: ignore[arg-type]
    group = _group(tenancy, "Researchers", role="developer", project="research")
    added = scim.patch_group(
        admin,
        ctx(),
        str(group.id),
        _patch(GroupResource, {"op": "add", "path": "members", "value": [{"value": user.id}]}),
        None,
    )
    assert [member.value for member in added.members or []] == [user.id]
    # The same token, on its next request: the group's role counts.
    principal = services.tokens.authenticate(token)
    assert principal.roles_for(project) == frozenset({Role.DEVELOPER})  # type: ignore[arg-type]
    assert principal.tenant_roles == frozenset()
    # Removed from the group: the role is gone on the next request.
    scim.patch_group(
        admin,
        ctx(),
        str(group.id),
        _patch(GroupResource, {"op": "remove", "path": f'members[value eq "{user.id}"]'}),
        None,
    )
    assert services.tokens.authenticate(token).roles_for(project) == frozenset()  # type: ignore[arg-type]
    # A tenant-wide grant, then the group deleted.
    admins = _group(tenancy, "Admins", [str(user.id)], role="tenant-admin")
    assert services.tokens.authenticate(token).tenant_roles == frozenset({Role.TENANT_ADMIN})
    scim.delete_group(admin, ctx(), str(admins.id), None)
    assert services.tokens.authenticate(token).tenant_roles == frozenset()


def test_an_incoherent_grant_grants_nothing(tenancy: Tenancy) -> None:
    services = tenancy.runtime.services
    user = _user(tenancy, "judy")
    token = _token_of(tenancy, user)
    _group(tenancy, "No project", [str(user.id)], role="developer")
    _group(tenancy, "Admin of a project", [str(user.id)], role="tenant-admin", project="research")
    _group(tenancy, "Project only", [str(user.id)], project="research")
    principal = services.tokens.authenticate(token)
    assert principal.tenant_roles == frozenset()
    assert principal.project_roles == ()


def test_group_values_are_checked(tenancy: Tenancy) -> None:
    scim = _scim(tenancy)
    admin = tenancy.tenant_admin
    with pytest.raises(ScimError) as caught:
        _group(tenancy, "Root", role="platform-admin")
    assert caught.value.field == "role"
    with pytest.raises(ScimError) as caught:
        _group(tenancy, "Elsewhere", role="viewer", project="no-such-project")
    assert caught.value.field == "project"
    # Another tenant's project by id: the same answer as a missing one.
    with pytest.raises(ScimError) as foreign:
        _group(tenancy, "Elsewhere", role="viewer", project=tenancy.outsider_project_id)
    assert foreign.value.detail.replace(
        tenancy.outsider_project_id, "X"
    ) == caught.value.detail.replace("no-such-project", "X")
    _group(tenancy, "Same")
    with pytest.raises(Uniqueness):
        _group(tenancy, "SAME")
    group = _group(tenancy, "By id", role="viewer", project=tenancy.project_id)
    assert group[Grant].project == "research"  # shown by name
    with pytest.raises(ScimError) as caught:
        scim.create_group(
            admin,
            ctx(),
            GroupResource(display_name="Nested", members=[Member(value=group.id, type="Group")]),
        )
    assert caught.value.field == "members"


# -- tenant isolation and authorization ----------------------------------------------------


def test_another_tenants_ids_are_not_found_exactly_like_missing_ones(tenancy: Tenancy) -> None:
    scim = _scim(tenancy)
    acme_user = _user(tenancy, "karl")
    acme_group = _group(tenancy, "Acme group", [str(acme_user.id)])
    globex = tenancy.principal("globex-admin", "globex")
    missing_user = "usr_01JZZZZZZZZZZZZZZZZZZZZZZZ"
    for call in (
        lambda i: scim.get_user(globex, ctx(), i),
        lambda i: scim.patch_user(
            globex,
            ctx(),
            i,
            _patch(User, {"op": "replace", "path": "active", "value": False}),
            None,
        ),
        lambda i: scim.replace_user(globex, ctx(), i, User(user_name="x"), None),
        lambda i: scim.delete_user(globex, ctx(), i, None),
    ):
        with pytest.raises(NotFound) as foreign:
            call(str(acme_user.id))
        with pytest.raises(NotFound) as missing:
            call(missing_user)
        assert foreign.value.detail.replace(str(acme_user.id), "X") == missing.value.detail.replace(
            missing_user, "X"
        )
    with pytest.raises(NotFound):
        scim.get_group(globex, ctx(), str(acme_group.id))
    with pytest.raises(NotFound):
        scim.delete_group(globex, ctx(), str(acme_group.id), None)
    # Another tenant's user as a member: refused like a missing user.
    with pytest.raises(ScimError) as caught:
        _group(tenancy, "Poach", [str(acme_user.id)], caller=globex)
    assert caught.value.field == "members"
    # Filters never reach across.
    page = scim.list_users(globex, ctx(), _query(User, filter=f'id eq "{acme_user.id}"'))
    assert page.total == 0
    # Nothing changed on acme's side.
    assert scim.get_user(tenancy.tenant_admin, ctx(), str(acme_user.id)).active is True


def test_only_tenant_admins_provision(tenancy: Tenancy) -> None:
    scim = _scim(tenancy)
    with pytest.raises(Forbidden):
        scim.list_users(tenancy.developer, ctx(), _query(User))
    with pytest.raises(Forbidden):
        scim.create_user(tenancy.viewer, ctx(), User(user_name="mallory"))
    with pytest.raises(Forbidden):
        scim.create_group(tenancy.developer, ctx(), GroupResource(display_name="Mine"))
    # A token narrowed to the SCIM scopes provisions; one narrowed elsewhere does not.
    admin = tenancy.runtime.services.admin
    narrow = admin.issue_token(
        tenancy.tenant_admin, ctx(), principal_name=None, scopes=["user", "group"], ttl_seconds=300
    )
    idp = tenancy.runtime.services.tokens.authenticate(narrow.token)
    _user(tenancy, "via-idp", caller=idp)
    _group(tenancy, "via-idp", caller=idp)
    jobs_only = admin.issue_token(
        tenancy.tenant_admin, ctx(), principal_name=None, scopes=["job"], ttl_seconds=300
    )
    with pytest.raises(Forbidden):
        _user(tenancy, "nope", caller=tenancy.runtime.services.tokens.authenticate(jobs_only.token))


# -- audit ----------------------------------------------------------------------------


def test_every_change_is_audited_with_ids_only(tenancy: Tenancy) -> None:
    services = tenancy.runtime.services
    scim, admin = services.scim, tenancy.tenant_admin
    since = datetime.now(UTC) - timedelta(seconds=1)
    user = _user(
        tenancy,
        "personal-name",
        display_name="Personal Display",
        external_id="personal-external",
        emails=[EmailAddress(value="personal@example.com")],
    )
    scim.patch_user(
        admin,
        ctx(),
        str(user.id),
        _patch(User, {"op": "replace", "path": "displayName", "value": "Personal Two"}),
        None,
    )
    group = _group(tenancy, "Personal Group", [str(user.id)], role="viewer", project="research")
    scim.patch_group(
        admin,
        ctx(),
        str(group.id),
        _patch(
            GroupResource, {"op": "replace", "path": "displayName", "value": "Personal Group 2"}
        ),
        None,
    )
    scim.patch_user(
        admin,
        ctx(),
        str(user.id),
        _patch(User, {"op": "replace", "path": "active", "value": False}),
        None,
    )
    scim.delete_user(admin, ctx(), str(user.id), None)
    scim.delete_group(admin, ctx(), str(group.id), None)
    with services.db.read() as session:
        events = session.scalars(
            select(m.AuditEvent).where(m.AuditEvent.at >= since).order_by(m.AuditEvent.seq)
        ).all()
    mine = [e for e in events if e.event_type.startswith(("user:", "group:"))]
    assert [e.event_type for e in mine] == [
        "user:create",
        "user:update",
        "group:create",
        "group:update",
        "user:update",
        "user:delete",
        "group:delete",
    ]
    assert all(e.outcome == "success" and e.actor_id == admin.id for e in mine)
    assert {e.resource_id for e in mine} == {user.id, group.id}
    assert "deactivated" in (mine[4].reason or "")
    assert "changed displayName" in (mine[1].reason or "")
    for event in events:
        text = " ".join(str(getattr(event, c.key)) for c in m.AuditEvent.__table__.columns)
        assert "personal" not in text.lower(), event.event_type


def test_a_lost_uniqueness_race_is_a_409_not_a_500(
    tenancy: Tenancy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before the insert can lose to a concurrent request; the
    database's constraint then decides, and the answer is still a 409."""
    monkeypatch.setattr(ScimService, "_check_user_name", staticmethod(lambda *_: None))
    monkeypatch.setattr(ScimService, "_check_group_name", staticmethod(lambda *_: None))
    _user(tenancy, "racer")
    with pytest.raises(Uniqueness) as caught:
        _user(tenancy, "racer")
    assert caught.value.status == 409
    _group(tenancy, "Racers")
    with pytest.raises(Uniqueness):
        _group(tenancy, "Racers")
