"""What a tenant admin does with the tenant's keys, through the API.

- Key rings: see them, rotate them (``key:list``, ``key:rotate``).
- The secrets vault: provider credentials, write-only. A value goes in
  through ``PUT`` and is sealed under the tenant's ``secret`` ring; no API
  reads it back. :meth:`TenantKeys.use_secret` opens it for the one
  execution call that needs it and records ``secret:use``.
- The export key: the tenant's X-Wing public key; exports asked for sealed
  are encrypted to it with HPKE (:mod:`qustody.crypto.sealed`), so only the
  tenant's private key opens them.

Disabling and destroying keys are operator commands (``qustody keys``) until
approvals exist; :class:`~qustody.keys.service.KeyService` has the hook.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, delete, insert, select, update

from qustody.audit.recorder import Actor, Target, record
from qustody.crypto.interfaces import KeyMaterial
from qustody.crypto.sealed import XWingPublicKey, seal
from qustody.domain.errors import InvalidRequest, NotFound
from qustody.domain.ids import new_id
from qustody.domain.models import Principal, RequestContext, Resource
from qustody.domain.vocabulary import Action
from qustody.keys.service import KeyScope, KeyService, Purpose, RingStatus
from qustody.policy.guard import Guard, not_found
from qustody.policy.misses import records_misses
from qustody.storage import models as m
from qustody.storage.db import Database

SECRET_FIELD = "value"  # noqa: S105 (a field name)
#: Largest secret value accepted (an API token or a service-account key file).
MAX_SECRET_BYTES = 64 * 1024
_SECRET_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What the API says about a secret: never its value."""

    name: str
    created_at: datetime
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True, slots=True)
class ExportKeyInfo:
    public_key: str
    fingerprint: str
    created_at: datetime
    created_by: str


class NoExportKey(NotFound):
    code = "export_key_missing"
    title = "No export key registered"


def _tenant(caller: Principal) -> Resource:
    return Resource("tenant", caller.tenant_id, caller.tenant_id)


def check_secret_name(name: str) -> str:
    if not _SECRET_NAME.fullmatch(name):
        raise InvalidRequest(
            f"secret name {name[:70]!r} is not valid: use 1-64 lowercase letters, digits, "
            "'.', '_' or '-', starting and ending with a letter or digit.",
            field="name",
        )
    return name


class TenantKeys:
    def __init__(self, db: Database, guard: Guard, keys: KeyService) -> None:
        self._db = db
        self._guard = guard
        self._keys = keys

    # -- key rings ------------------------------------------------------------------

    def rings(self, caller: Principal, request: RequestContext) -> list[RingStatus]:
        self._guard.check(caller, Action.KEY_LIST, _tenant(caller), request)
        return self._keys.rings(caller.tenant_id)

    @records_misses(Action.KEY_ROTATE)
    def rotate(
        self, caller: Principal, request: RequestContext, project_id: str | None
    ) -> list[str]:
        decision = self._guard.check(caller, Action.KEY_ROTATE, _tenant(caller), request)
        if project_id is not None:
            with self._db.reading() as connection:
                found = connection.execute(
                    select(m.PROJECTS.c.id).where(
                        m.PROJECTS.c.id == project_id, m.PROJECTS.c.tenant_id == caller.tenant_id
                    )
                ).scalar()
            if found is None:
                raise not_found("project", project_id[:64])
        return self._keys.rotate(
            Actor.of(caller), caller.tenant_id, project_id, decision=decision, request=request
        )

    # -- the secrets vault ----------------------------------------------------------

    def set_secret(
        self, caller: Principal, request: RequestContext, name: str, value: bytes
    ) -> SecretInfo:
        """Store (or replace) a secret's value, sealed; the value is never returned."""
        check_secret_name(name)
        if not 0 < len(value) <= MAX_SECRET_BYTES:
            raise InvalidRequest(
                f"the secret value is {len(value)} bytes; it must be 1 to {MAX_SECRET_BYTES}.",
                field="value",
            )
        decision = self._guard.check(caller, Action.SECRET_SET, _tenant(caller), request)
        now = datetime.now(UTC)
        scope = KeyScope(caller.tenant_id, None, Purpose.SECRET)
        with self._db.writing() as connection:
            existing = connection.execute(
                select(m.SECRETS.c.id, m.SECRETS.c.created_at)
                .where(m.SECRETS.c.tenant_id == caller.tenant_id, m.SECRETS.c.name == name)
                .with_for_update()
            ).first()
            if existing is None:
                secret_id, created_at = new_id("sec"), now
                connection.execute(
                    insert(m.SECRETS),
                    {
                        "id": secret_id,
                        "tenant_id": caller.tenant_id,
                        "name": name,
                        "created_at": now,
                        "updated_at": now,
                        "updated_by": caller.id,
                    },
                )
            else:
                secret_id, created_at = existing.id, existing.created_at
                connection.execute(
                    update(m.SECRETS)
                    .where(m.SECRETS.c.id == secret_id)
                    .values(updated_at=now, updated_by=caller.id)
                )
                _delete_value(connection, secret_id)
            self._keys.seal(connection, scope, secret_id, SECRET_FIELD, value)
            record(
                connection,
                Action.SECRET_SET,
                actor=Actor.of(caller),
                target=Target("secret", secret_id, caller.tenant_id),
                decision=decision,
                request=request,
                reason=f"secret {name} {'created' if existing is None else 'replaced'}",
            )
        return SecretInfo(name, created_at, now, caller.id)

    def list_secrets(self, caller: Principal, request: RequestContext) -> list[SecretInfo]:
        self._guard.check(caller, Action.SECRET_LIST, _tenant(caller), request)
        with self._db.reading() as connection:
            rows = connection.execute(
                select(m.SECRETS)
                .where(m.SECRETS.c.tenant_id == caller.tenant_id)
                .order_by(m.SECRETS.c.name)
            ).all()
        return [SecretInfo(r.name, r.created_at, r.updated_at, r.updated_by) for r in rows]

    @records_misses(Action.SECRET_DELETE)
    def delete_secret(self, caller: Principal, request: RequestContext, name: str) -> None:
        check_secret_name(name)
        decision = self._guard.check(caller, Action.SECRET_DELETE, _tenant(caller), request)
        with self._db.writing() as connection:
            secret_id = connection.execute(
                select(m.SECRETS.c.id).where(
                    m.SECRETS.c.tenant_id == caller.tenant_id, m.SECRETS.c.name == name
                )
            ).scalar()
            if secret_id is None:
                raise not_found("secret", name)
            _delete_value(connection, secret_id)
            connection.execute(delete(m.SECRETS).where(m.SECRETS.c.id == secret_id))
            record(
                connection,
                Action.SECRET_DELETE,
                actor=Actor.of(caller),
                target=Target("secret", secret_id, caller.tenant_id),
                decision=decision,
                request=request,
                reason=f"secret {name} deleted",
            )

    def use_secret(self, tenant_id: str, name: str, *, job_id: str) -> KeyMaterial:
        """Open a secret for the execution of ``job_id``: the value comes back
        as :class:`KeyMaterial`, which does not print; the use is recorded."""
        check_secret_name(name)
        with self._db.writing() as connection:
            secret_id = connection.execute(
                select(m.SECRETS.c.id).where(
                    m.SECRETS.c.tenant_id == tenant_id, m.SECRETS.c.name == name
                )
            ).scalar()
            value = (
                None
                if secret_id is None
                else self._keys.open(connection, tenant_id, secret_id, SECRET_FIELD)
            )
            if secret_id is None or value is None:
                raise not_found("secret", name)
            record(
                connection,
                Action.SECRET_USE,
                actor=Actor.system("worker"),
                target=Target("secret", secret_id, tenant_id),
                job_id=job_id,
                reason=f"secret {name} opened for one execution",
            )
        return KeyMaterial(value)

    # -- the export key -------------------------------------------------------------

    def set_export_key(
        self, caller: Principal, request: RequestContext, public_key: str
    ) -> ExportKeyInfo:
        key = XWingPublicKey.from_text(public_key)
        decision = self._guard.check(caller, Action.EXPORTKEY_SET, _tenant(caller), request)
        now = datetime.now(UTC)
        with self._db.writing() as connection:
            connection.execute(
                delete(m.EXPORT_KEYS).where(m.EXPORT_KEYS.c.tenant_id == caller.tenant_id)
            )
            connection.execute(
                insert(m.EXPORT_KEYS),
                {
                    "tenant_id": caller.tenant_id,
                    "public_key": key.to_text(),
                    "fingerprint": key.fingerprint,
                    "created_at": now,
                    "created_by": caller.id,
                },
            )
            record(
                connection,
                Action.EXPORTKEY_SET,
                actor=Actor.of(caller),
                target=Target("tenant", caller.tenant_id, caller.tenant_id),
                decision=decision,
                request=request,
                reason=f"export key set, fingerprint {key.fingerprint}",
            )
        return ExportKeyInfo(key.to_text(), key.fingerprint, now, caller.id)

    def export_key(self, caller: Principal, request: RequestContext) -> ExportKeyInfo:
        self._guard.check(caller, Action.EXPORTKEY_READ, _tenant(caller), request)
        info = self._export_key(caller.tenant_id)
        if info is None:
            raise _no_export_key()
        return info

    def seal_export(
        self,
        tenant_id: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> bytes:
        """``data`` sealed to the tenant's export key (HPKE, X-Wing)."""
        info = self._export_key(tenant_id)
        if info is None:
            raise _no_export_key()
        return seal(
            data,
            XWingPublicKey.from_text(info.public_key),
            content_type=content_type,
            metadata=metadata,
        )

    def _export_key(self, tenant_id: str) -> ExportKeyInfo | None:
        with self._db.reading() as connection:
            row = connection.execute(
                select(m.EXPORT_KEYS).where(m.EXPORT_KEYS.c.tenant_id == tenant_id)
            ).first()
        if row is None:
            return None
        return ExportKeyInfo(row.public_key, row.fingerprint, row.created_at, row.created_by)


def _delete_value(connection: Connection, secret_id: str) -> None:
    connection.execute(
        delete(m.SEALED_OBJECTS).where(
            m.SEALED_OBJECTS.c.object_id == secret_id, m.SEALED_OBJECTS.c.field == SECRET_FIELD
        )
    )


def _no_export_key() -> NoExportKey:
    return NoExportKey(
        "the tenant has no export key, so nothing can be sealed to it: a tenant admin "
        "registers one with PUT /v1/export-key (`qustody export-key set`).",
    )
