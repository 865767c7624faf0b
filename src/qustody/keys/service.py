"""Key rings in the database, key material in the providers.

Every tenant has key rings, one per project and purpose (and tenant-wide
ones for purposes that belong to no project)::

    ten_A.prj_B.payload     circuits and results of project B
    ten_A.prj_B.metadata    job names, labels and other user-supplied metadata
    ten_A.secret            the tenant's stored provider credentials

A ring has versions; one is ``current`` and new values are sealed under it.
:meth:`KeyService.rotate` adds a version and marks the old one ``retiring``;
:meth:`KeyService.rewrap_step` (run in the background by every worker)
moves the data keys of retiring versions to the current one, a batch per
transaction, compare-and-set on the key id, so a crash loses nothing and the
next run resumes where it stopped; a retiring version that no stored value
references any more is ``retired`` and destroyed in its provider.

:meth:`KeyService.destroy` crypto-shreds a tenant or one project: every
version of every ring in scope is destroyed in its provider, then checked
to be gone, and a certificate of destruction (key ids, object counts, time,
actor) is stored and its digest recorded in the audit log.

Concurrency: sealing reads the ring row ``FOR SHARE`` in the sealing
transaction, rotation and destruction take it ``FOR UPDATE``, so a value is
never sealed under a version that a committed rotation has already replaced
(on SQLite the single writer gives the same order).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Row, and_, func, insert, select, text, update

from qustody.audit.recorder import Actor, Target, Transaction, connection_of, record
from qustody.crypto.envelope import Envelope, SealedBlob
from qustody.crypto.errors import KeyUnavailable
from qustody.crypto.interfaces import KeyProvider, key_id, parse_key_id
from qustody.domain.ids import new_id
from qustody.domain.models import Decision, RequestContext
from qustody.domain.vocabulary import Action
from qustody.keys.errors import CustomerKeyUnavailable, DataDestroyed, KeysDisabled
from qustody.storage import models as m
from qustody.storage.db import Database

log = logging.getLogger(__name__)

_RINGS = m.KEY_RINGS
_VERSIONS = m.KEY_VERSIONS
_SEALED = m.SEALED_OBJECTS


class Purpose(StrEnum):
    """What a ring's keys protect. Each purpose has its own keys, so one
    can be rotated or destroyed without the others."""

    PAYLOAD = "payload"
    METADATA = "metadata"
    SECRET = "secret"  # noqa: S105 (a purpose name, not a secret)


#: Purposes whose rings belong to a project; the others are tenant-wide.
PROJECT_PURPOSES = (Purpose.PAYLOAD, Purpose.METADATA)
TENANT_PURPOSES = (Purpose.SECRET,)


@dataclass(frozen=True, slots=True)
class KeyScope:
    tenant_id: str
    project_id: str | None
    purpose: Purpose

    @property
    def ring(self) -> str:
        parts = [self.tenant_id, self.project_id, self.purpose.value]
        return ".".join(part for part in parts if part)


@dataclass(frozen=True, slots=True)
class VersionStatus:
    key_id: str
    version: int
    state: str
    objects: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RingStatus:
    ring: str
    project_id: str | None
    purpose: str
    provider: str
    state: str
    current_version: int
    versions: tuple[VersionStatus, ...]

    @property
    def pending(self) -> int:
        """Values still wrapped under a retiring version."""
        return sum(v.objects for v in self.versions if v.state == "retiring")


@dataclass(slots=True)
class RewrapProgress:
    moved: int = 0
    remaining: int = 0
    retired: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Certificate:
    """A certificate of destruction: stored, and its SHA-256 audited."""

    id: str
    tenant_id: str
    project_id: str | None
    issued_at: datetime
    document: str
    sha256: str

    @property
    def content(self) -> dict[str, object]:
        parsed: dict[str, object] = json.loads(self.document)
        return parsed


#: Called before a destruction with (actor, tenant, project, reason); returns
#: the id of the approval that allows it, or raises. The governance issue's
#: approvals plug in here; the default allows and links no approval.
ApprovalGate = Callable[[Actor, str, str | None, str], str | None]


def _no_approval(_actor: Actor, _tenant: str, _project: str | None, _reason: str) -> None:
    return None


class KeyService:
    """Seals and opens stored values under the right ring, and runs the
    key lifecycle (rotation, rewrap, retirement, disabling, destruction).

    ``default_provider`` names the provider new rings are created in;
    ``tenant_providers`` maps a tenant id to its own provider (a
    customer-managed key in the tenant's own HSM).
    """

    def __init__(
        self,
        db: Database,
        envelope: Envelope,
        *,
        default_provider: str,
        tenant_providers: Mapping[str, str] | None = None,
        approval_gate: ApprovalGate | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if default_provider not in envelope.providers:
            raise ValueError(f"no key provider named {default_provider!r} is configured")
        self._db = db
        self._envelope = envelope
        self._default = default_provider
        self._tenant_providers = dict(tenant_providers or {})
        self._approval_gate = approval_gate or _no_approval
        self._clock = clock

    @property
    def envelope(self) -> Envelope:
        return self._envelope

    # -- sealing and opening, inside the caller's transaction ---------------------

    def current_key(self, transaction: Transaction, scope: KeyScope) -> str:
        """The key id new values in ``scope`` are sealed under; creates the
        ring on first use. Raises KeysDisabled or DataDestroyed."""
        connection = connection_of(transaction)
        row = connection.execute(
            select(_RINGS.c.provider, _RINGS.c.current_version, _RINGS.c.state)
            .where(_RINGS.c.ring == scope.ring)
            .with_for_update(read=True)
        ).first()
        if row is None:
            return self._create_ring(connection, scope)
        _check_ring_state(row.state, scope.ring)
        return key_id(row.provider, scope.ring, row.current_version)

    def seal(
        self,
        transaction: Transaction,
        scope: KeyScope,
        object_id: str,
        field_name: str,
        plaintext: bytes,
        *,
        plaintext_sha256: str | None = None,
    ) -> None:
        """Seal ``plaintext`` as ``field_name`` of ``object_id`` and store it."""
        connection = connection_of(transaction)
        sealed = self._envelope.seal(
            self.current_key(connection, scope), scope.tenant_id, object_id, field_name, plaintext
        )
        connection.execute(
            insert(_SEALED),
            {
                "object_id": object_id,
                "field": field_name,
                "tenant_id": scope.tenant_id,
                "project_id": scope.project_id,
                "key_id": sealed.key_id,
                "wrapped_dek": sealed.wrapped,
                "body": sealed.body,
                "plaintext_sha256": plaintext_sha256,
                "created_at": self._clock(),
            },
        )

    def open(
        self, transaction: Transaction, tenant_id: str, object_id: str, field_name: str
    ) -> bytes | None:
        """The plaintext of a stored value, or None when there is none.

        Raises KeysDisabled, DataDestroyed or CustomerKeyUnavailable when its
        keys are switched off, shredded, or refused by the tenant's own HSM.
        """
        return self.open_many(transaction, tenant_id, [object_id], field_name).get(object_id)

    def open_many(
        self,
        transaction: Transaction,
        tenant_id: str,
        object_ids: Sequence[str],
        field_name: str,
    ) -> dict[str, bytes]:
        """:meth:`open` for several objects' ``field_name`` in one query
        (a page of jobs); objects without the field are left out."""
        if not object_ids:
            return {}
        rows = (
            connection_of(transaction)
            .execute(
                select(
                    _SEALED.c.object_id,
                    _SEALED.c.key_id,
                    _SEALED.c.wrapped_dek,
                    _SEALED.c.body,
                    _VERSIONS.c.state.label("version_state"),
                    _RINGS.c.state.label("ring_state"),
                    _RINGS.c.ring,
                )
                .join(_VERSIONS, _VERSIONS.c.key_id == _SEALED.c.key_id)
                .join(_RINGS, _RINGS.c.ring == _VERSIONS.c.ring)
                .where(
                    _SEALED.c.object_id.in_(object_ids),
                    _SEALED.c.field == field_name,
                    _SEALED.c.tenant_id == tenant_id,
                )
            )
            .all()
        )
        opened: dict[str, bytes] = {}
        for row in rows:
            _check_ring_state(row.ring_state, row.ring)
            if row.version_state == "destroyed":
                raise _destroyed(row.ring)
            blob = SealedBlob(row.key_id, row.wrapped_dek, row.body)
            try:
                opened[row.object_id] = self._envelope.open(
                    tenant_id, row.object_id, field_name, blob
                )
            except KeyUnavailable as error:
                raise self._refused(tenant_id, row.key_id, error) from error
        return opened

    # -- status -------------------------------------------------------------------

    def rings(self, tenant_id: str, project_id: str | None = None) -> list[RingStatus]:
        """Every ring of a tenant (or of one project), with its versions and
        how many stored values each version protects."""
        with self._db.reading() as connection:
            where = [_RINGS.c.tenant_id == tenant_id]
            if project_id is not None:
                where.append(_RINGS.c.project_id == project_id)
            rings = connection.execute(select(_RINGS).where(*where).order_by(_RINGS.c.ring)).all()
            versions = connection.execute(
                select(_VERSIONS, func.count(_SEALED.c.object_id).label("objects"))
                .outerjoin(_SEALED, _SEALED.c.key_id == _VERSIONS.c.key_id)
                .where(_VERSIONS.c.tenant_id == tenant_id)
                .group_by(*_VERSIONS.c)
                .order_by(_VERSIONS.c.ring, _VERSIONS.c.version)
            ).all()
        by_ring: dict[str, list[VersionStatus]] = {}
        for v in versions:
            by_ring.setdefault(v.ring, []).append(
                VersionStatus(v.key_id, v.version, v.state, v.objects, v.created_at)
            )
        return [
            RingStatus(
                r.ring,
                r.project_id,
                r.purpose,
                r.provider,
                r.state,
                r.current_version,
                tuple(by_ring.get(r.ring, ())),
            )
            for r in rings
        ]

    # -- rotation -----------------------------------------------------------------

    def rotate(
        self,
        actor: Actor,
        tenant_id: str,
        project_id: str | None = None,
        *,
        decision: Decision | None = None,
        request: RequestContext | None = None,
    ) -> list[str]:
        """Add a new current version to every active ring of the tenant (or
        project); the old versions start retiring. Returns the new key ids."""
        rotated: list[str] = []
        for ring in self._ring_names(tenant_id, project_id, states=("active",)):
            with self._db.writing() as connection:
                row = self._lock_ring(connection, ring)
                if row.state != "active":
                    continue
                now = self._clock()
                version = row.current_version + 1
                # A tenant that now brings its own key moves there on rotation.
                provider = self._tenant_providers.get(tenant_id, self._default)
                new_key = self._envelope.providers[provider].create_key(ring, version)
                old_key = key_id(row.provider, ring, row.current_version)
                connection.execute(
                    update(_VERSIONS)
                    .where(_VERSIONS.c.ring == ring, _VERSIONS.c.state == "current")
                    .values(state="retiring")
                )
                self._add_version(connection, ring, tenant_id, new_key, version, now)
                connection.execute(
                    update(_RINGS)
                    .where(_RINGS.c.ring == ring)
                    .values(current_version=version, provider=provider, updated_at=now)
                )
                record(
                    connection,
                    Action.KEY_ROTATE,
                    actor=actor,
                    decision=decision,
                    request=request,
                    target=Target("key", self._version_id(connection, new_key), tenant_id),
                    reason=f"ring {ring}: v{row.current_version} -> v{version} "
                    f"(was {old_key}); existing data keys are rewrapped in the background",
                )
            rotated.append(new_key)
        return rotated

    def rewrap_step(self, batch: int = 256) -> RewrapProgress:
        """Move up to ``batch`` data keys from retiring versions to their
        ring's current version, in one transaction; retire versions nothing
        references any more. Safe to run in several processes at once."""
        progress = RewrapProgress()
        with self._db.reading() as connection:
            retiring = connection.execute(
                select(_VERSIONS.c.key_id, _VERSIONS.c.ring)
                .where(_VERSIONS.c.state == "retiring")
                .order_by(_VERSIONS.c.created_at)
            ).all()
        for old_key, ring in retiring:
            if progress.moved < batch:
                progress.moved += self._rewrap_batch(old_key, ring, batch - progress.moved)
            remaining = self._count(old_key)
            if remaining == 0 and self._retire(old_key, ring):
                progress.retired.append(old_key)
            progress.remaining += remaining
        return progress

    def rewrap_all(
        self, batch: int = 256, on_progress: Callable[[RewrapProgress], None] | None = None
    ) -> RewrapProgress:
        """Run :meth:`rewrap_step` until nothing is left to move."""
        total = RewrapProgress()
        while True:
            step = self.rewrap_step(batch)
            total.moved += step.moved
            total.retired += step.retired
            total.remaining = step.remaining
            if on_progress is not None:
                on_progress(total)
            if step.moved == 0:
                return total

    # -- disabling ----------------------------------------------------------------

    def set_enabled(self, actor: Actor, tenant_id: str, enabled: bool, reason: str) -> int:
        """Disable (or enable again) every ring of a tenant: while disabled,
        none of its data can be sealed or opened. Returns the rings changed."""
        wanted, current = ("active", "disabled") if enabled else ("disabled", "active")
        changed = 0
        with self._db.writing() as connection:
            rings = (
                connection.execute(
                    select(_RINGS.c.ring)
                    .where(_RINGS.c.tenant_id == tenant_id, _RINGS.c.state == current)
                    .with_for_update()
                )
                .scalars()
                .all()
            )
            if rings:
                connection.execute(
                    update(_RINGS)
                    .where(_RINGS.c.ring.in_(rings))
                    .values(state=wanted, updated_at=self._clock())
                )
            changed = len(rings)
            record(
                connection,
                Action.KEY_ENABLE if enabled else Action.KEY_DISABLE,
                actor=actor,
                target=Target("tenant", tenant_id, tenant_id),
                reason=f"{changed} key rings {wanted}: {reason}"[:512],
            )
        if not enabled:
            self._envelope.forget(self._key_ids(tenant_id))
        return changed

    # -- crypto-shredding ---------------------------------------------------------

    def destroy(
        self, actor: Actor, tenant_id: str, project_id: str | None, reason: str
    ) -> Certificate:
        """Crypto-shred a tenant (``project_id`` None: every ring) or one
        project: destroy every key version in scope in its provider, check
        each is gone, store a certificate of destruction and audit it.

        Idempotent and resumable: a run interrupted after some keys were
        destroyed is finished by running it again.
        """
        approval_id = self._approval_gate(actor, tenant_id, project_id, reason)
        with self._db.writing() as connection:
            # Rings not yet used are created so that they are destroyed too,
            # and no later write can start them afresh.
            for scope in self._scopes(connection, tenant_id, project_id):
                if not connection.execute(
                    select(_RINGS.c.ring).where(_RINGS.c.ring == scope.ring)
                ).first():
                    self._create_ring(connection, scope)
        rings = self._ring_names(tenant_id, project_id, states=("active", "disabled", "destroying"))
        counts: dict[str, int] = {}
        with self._db.writing() as connection:
            for ring in rings:
                self._lock_ring(connection, ring)
            if rings:
                connection.execute(
                    update(_RINGS)
                    .where(_RINGS.c.ring.in_(rings))
                    .values(state="destroying", updated_at=self._clock())
                )
            versions = connection.execute(
                select(_VERSIONS.c.key_id, _VERSIONS.c.ring, _VERSIONS.c.state)
                .where(_VERSIONS.c.ring.in_(rings), _VERSIONS.c.state != "destroyed")
                .order_by(_VERSIONS.c.ring, _VERSIONS.c.version)
            ).all()
            for version in versions:
                counts[version.key_id] = self._count(version.key_id, connection)
        destroyed: list[dict[str, object]] = []
        for version in versions:
            provider = self._provider_of(version.key_id)
            existed = provider.destroy_key(version.key_id)
            gone = not provider.has_key(version.key_id)
            if not gone:
                raise KeyUnavailable(
                    version.key_id, "the key provider still holds it after destruction"
                )
            destroyed.append(
                {
                    "key_id": version.key_id,
                    "ring": version.ring,
                    "state_before": version.state,
                    "objects": counts[version.key_id],
                    "destroyed_in_provider": existed,
                    "verified_absent": gone,
                }
            )
        self._envelope.forget(counts)
        now = self._clock()
        document = json.dumps(
            {
                "type": "qustody-destruction-certificate/1",
                "tenant_id": tenant_id,
                "project_id": project_id,
                "issued_at": now.isoformat(),
                "actor": actor.id,
                "approval_id": approval_id,
                "reason": reason,
                "keys": destroyed,
                "objects": sum(counts.values()),
                "rings": rings,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        certificate = Certificate(
            new_id("cod"),
            tenant_id,
            project_id,
            now,
            document,
            hashlib.sha256(document.encode("utf-8")).hexdigest(),
        )
        with self._db.writing() as connection:
            connection.execute(
                update(_VERSIONS)
                .where(_VERSIONS.c.key_id.in_(list(counts)))
                .values(state="destroyed", destroyed_at=now)
            )
            if rings:
                connection.execute(
                    update(_RINGS)
                    .where(_RINGS.c.ring.in_(rings))
                    .values(state="destroyed", updated_at=now)
                )
            connection.execute(
                insert(m.DESTRUCTION_CERTIFICATES),
                {
                    "id": certificate.id,
                    "tenant_id": tenant_id,
                    "project_id": project_id,
                    "issued_at": now,
                    "document": document,
                    "sha256": certificate.sha256,
                },
            )
            record(
                connection,
                Action.KEY_DESTROY,
                actor=actor,
                target=Target("certificate", certificate.id, tenant_id),
                approval_id=approval_id,
                payload_sha256=certificate.sha256,
                reason=(
                    f"certificate of destruction: {len(destroyed)} keys of {len(rings)} rings "
                    f"destroyed, {sum(counts.values())} stored values unreadable"
                    + (f", project {project_id}" if project_id else ", whole tenant")
                ),
            )
        return certificate

    def certificates(self, tenant_id: str) -> list[Certificate]:
        table = m.DESTRUCTION_CERTIFICATES
        with self._db.reading() as connection:
            rows = connection.execute(
                select(table).where(table.c.tenant_id == tenant_id).order_by(table.c.issued_at)
            ).all()
        return [
            Certificate(r.id, r.tenant_id, r.project_id, r.issued_at, r.document, r.sha256)
            for r in rows
        ]

    # -- internals ----------------------------------------------------------------

    def _create_ring(self, connection: Connection, scope: KeyScope) -> str:
        """Create a ring and its first version, holding a lock that makes
        racing creators wait (the provider's key creation is then never raced)."""
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:ring))"), {"ring": scope.ring}
            )
            row = connection.execute(
                select(_RINGS.c.provider, _RINGS.c.current_version, _RINGS.c.state).where(
                    _RINGS.c.ring == scope.ring
                )
            ).first()
            if row is not None:  # created while we waited
                _check_ring_state(row.state, scope.ring)
                return key_id(row.provider, scope.ring, row.current_version)
        tenant_ring = KeyScope(scope.tenant_id, None, TENANT_PURPOSES[0]).ring
        if scope.ring != tenant_ring:
            tenant_state = connection.execute(
                select(_RINGS.c.state).where(_RINGS.c.ring == tenant_ring)
            ).scalar()
            if tenant_state in ("destroying", "destroyed"):
                raise _destroyed(tenant_ring)  # the whole tenant was shredded
        provider = self._tenant_providers.get(scope.tenant_id, self._default)
        now = self._clock()
        new_key = self._envelope.providers[provider].create_key(scope.ring, 1)
        connection.execute(
            insert(_RINGS),
            {
                "ring": scope.ring,
                "tenant_id": scope.tenant_id,
                "project_id": scope.project_id,
                "purpose": scope.purpose.value,
                "provider": provider,
                "current_version": 1,
                "state": "active",
                "created_at": now,
                "updated_at": now,
            },
        )
        self._add_version(connection, scope.ring, scope.tenant_id, new_key, 1, now)
        record(
            connection,
            Action.KEY_CREATE,
            actor=Actor.system("keys"),
            target=Target("key", self._version_id(connection, new_key), scope.tenant_id),
            reason=f"ring {scope.ring} created in key provider {provider!r}",
        )
        return new_key

    def _scopes(
        self, connection: Connection, tenant_id: str, project_id: str | None
    ) -> list[KeyScope]:
        if project_id is not None:
            return list(scopes_for_project(tenant_id, project_id))
        projects = connection.execute(
            select(m.PROJECTS.c.id).where(m.PROJECTS.c.tenant_id == tenant_id)
        ).scalars()
        scopes = [KeyScope(tenant_id, None, purpose) for purpose in TENANT_PURPOSES]
        for project in projects:
            scopes.extend(scopes_for_project(tenant_id, project))
        return scopes

    def _add_version(
        self,
        connection: Connection,
        ring: str,
        tenant_id: str,
        new_key: str,
        version: int,
        now: datetime,
    ) -> None:
        connection.execute(
            insert(_VERSIONS),
            {
                "key_id": new_key,
                "id": new_id("key"),
                "ring": ring,
                "tenant_id": tenant_id,
                "version": version,
                "state": "current",
                "created_at": now,
            },
        )

    def _version_id(self, connection: Connection, key: str) -> str:
        version_id: str = connection.execute(
            select(_VERSIONS.c.id).where(_VERSIONS.c.key_id == key)
        ).scalar_one()
        return version_id

    def _lock_ring(self, connection: Connection, ring: str) -> Row[Any, Any, Any]:
        return connection.execute(
            select(_RINGS.c.provider, _RINGS.c.current_version, _RINGS.c.state)
            .where(_RINGS.c.ring == ring)
            .with_for_update()
        ).one()

    def _ring_names(
        self, tenant_id: str, project_id: str | None, *, states: Sequence[str]
    ) -> list[str]:
        where = [_RINGS.c.tenant_id == tenant_id, _RINGS.c.state.in_(states)]
        if project_id is not None:
            where.append(_RINGS.c.project_id == project_id)
        with self._db.reading() as connection:
            return list(
                connection.execute(select(_RINGS.c.ring).where(*where).order_by(_RINGS.c.ring))
                .scalars()
                .all()
            )

    def _key_ids(self, tenant_id: str) -> list[str]:
        with self._db.reading() as connection:
            return list(
                connection.execute(
                    select(_VERSIONS.c.key_id).where(_VERSIONS.c.tenant_id == tenant_id)
                ).scalars()
            )

    def _count(self, key: str, connection: Connection | None = None) -> int:
        query = select(func.count()).select_from(_SEALED).where(_SEALED.c.key_id == key)
        if connection is not None:
            return int(connection.execute(query).scalar_one())
        with self._db.reading() as reading:
            return int(reading.execute(query).scalar_one())

    def _rewrap_batch(self, old_key: str, ring: str, limit: int) -> int:
        with self._db.writing() as connection:
            row = self._lock_ring(connection, ring)
            if row.state != "active":
                return 0  # disabled or being destroyed: leave it alone
            new_key = key_id(row.provider, ring, row.current_version)
            if new_key == old_key:
                return 0
            query = (
                select(_SEALED.c.object_id, _SEALED.c.field, _SEALED.c.wrapped_dek)
                .where(_SEALED.c.key_id == old_key)
                .limit(limit)
            )
            if connection.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            moved = 0
            for object_id, field_name, wrapped in connection.execute(query).all():
                rewrapped = self._envelope.rewrap(SealedBlob(old_key, wrapped, b""), new_key)
                result = connection.execute(
                    update(_SEALED)
                    .where(
                        and_(
                            _SEALED.c.object_id == object_id,
                            _SEALED.c.field == field_name,
                            _SEALED.c.key_id == old_key,
                        )
                    )
                    .values(key_id=new_key, wrapped_dek=rewrapped.wrapped)
                )
                moved += result.rowcount
        return moved

    def _retire(self, old_key: str, ring: str) -> bool:
        """Retire a version nothing references: its KEK is destroyed (it
        protects nothing, and keeping it would only help whoever holds an
        old backup of the database)."""
        with self._db.writing() as connection:
            self._lock_ring(connection, ring)
            state = connection.execute(
                select(_VERSIONS.c.state).where(_VERSIONS.c.key_id == old_key)
            ).scalar_one()
            if state != "retiring" or self._count(old_key, connection):
                return False
            now = self._clock()
            connection.execute(
                update(_VERSIONS)
                .where(_VERSIONS.c.key_id == old_key)
                .values(state="retired", retired_at=now)
            )
            self._provider_of(old_key).destroy_key(old_key)
            self._envelope.forget([old_key])
            tenant_id = ring.split(".", 1)[0]
            record(
                connection,
                Action.KEY_RETIRE,
                actor=Actor.system("keys"),
                target=Target("key", self._version_id(connection, old_key), tenant_id),
                reason=f"{old_key} retired: every data key it wrapped was rewrapped",
            )
        return True

    def _provider_of(self, key: str) -> KeyProvider:
        return self._envelope.provider_for(key)

    def _refused(
        self, tenant_id: str, key: str, error: KeyUnavailable
    ) -> CustomerKeyUnavailable | KeyUnavailable:
        """Record a key its provider would not use; a tenant's own key
        becomes an error that tells the caller whose key it is."""
        with self._db.writing() as connection:
            record(
                connection,
                Action.KEY_FAIL,
                actor=Actor.system("keys"),
                outcome="failure",
                target=Target("key", self._version_id(connection, key), tenant_id),
                reason=f"{key}: {error.detail}"[:512],
            )
        ref = parse_key_id(key)
        if ref is not None and ref.provider in self._tenant_providers.values():
            return CustomerKeyUnavailable(
                f"the tenant's own key {key!r} (in the tenant's HSM) refused to unwrap: it is "
                "disabled, removed or unreachable. The tenant's key administrator must enable "
                "it again; until then this tenant's data cannot be read",
                extra={"key_id": key},
            )
        return error


def _check_ring_state(state: str, ring: str) -> None:
    if state == "active":
        return
    if state == "disabled":
        raise KeysDisabled(
            f"the keys of ring {ring} are disabled, so its data can be neither read nor "
            "written; a tenant admin or operator must enable them (`qustody keys enable`)"
        )
    raise _destroyed(ring)


def _destroyed(ring: str) -> DataDestroyed:
    return DataDestroyed(
        f"the keys of ring {ring} were destroyed (crypto-shredded): its data can never be "
        "read again and it accepts no new data. The certificate of destruction is in the "
        "audit log (event key:destroy)"
    )


def scopes_for_project(tenant_id: str, project_id: str) -> Iterable[KeyScope]:
    return (KeyScope(tenant_id, project_id, purpose) for purpose in PROJECT_PURPOSES)
