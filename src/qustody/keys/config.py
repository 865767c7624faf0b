"""Key providers from the settings: the platform's provider, and tenants' own.

Customer-managed keys are named in a JSON file (``QUSTODY_CUSTOMER_KEYS_FILE``)
that maps tenant ids to their own PKCS#11 tokens::

    {"ten_01J…": {"name": "cmk-acme", "module": "/usr/lib/…/libvendor.so",
                  "token_label": "acme-qustody", "pin_file": "/etc/qustody/acme.pin"}}

A tenant listed there gets its new key rings, and its next rotation, in its
own token; it can cut Qustody off from its data by disabling the key there.
DEKs unwrapped by a tenant's own key are never cached, so that takes effect
on the next read.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from qustody.crypto.envelope import Envelope
from qustody.crypto.interfaces import KeyMaterial, KeyProvider
from qustody.crypto.local import LocalKeyring
from qustody.crypto.pkcs11 import Pkcs11Provider
from qustody.domain.errors import ConfigurationError
from qustody.keys.service import ApprovalGate, KeyService
from qustody.settings import Settings
from qustody.storage.db import Database

PIN_ENV = "QUSTODY_PKCS11_PIN"
_TENANT_ID = re.compile(r"ten_[0-9A-Za-z]{1,36}")
_CMK_NAME = re.compile(r"cmk-[a-z0-9-]{1,28}")


@dataclass(frozen=True, slots=True)
class CustomerToken:
    tenant_id: str
    name: str
    module: str
    token_label: str
    pin_file: Path


def platform_provider(settings: Settings, environ: Mapping[str, str] | None = None) -> KeyProvider:
    """The provider that holds the platform's key rings."""
    env = os.environ if environ is None else environ
    production = settings.mode == "production"
    if settings.key_provider == "local":
        return LocalKeyring.open_or_create(
            settings.resolved_keyring_file,
            master_key_file=settings.resolved_master_key_file,
            environ=env,
            production=production,
        )
    pin = env.get(PIN_ENV)
    if pin:
        return Pkcs11Provider(
            settings.pkcs11_module, settings.pkcs11_token_label, KeyMaterial(pin.encode())
        )
    if settings.pkcs11_pin_file is None:
        raise ConfigurationError(
            f"the PKCS#11 token's user PIN is not configured: set QUSTODY_PKCS11_PIN_FILE "
            f"(a file readable by its owner only) or {PIN_ENV}"
        )
    return Pkcs11Provider.from_pin_file(
        settings.pkcs11_module, settings.pkcs11_token_label, settings.pkcs11_pin_file
    )


def customer_tokens(path: Path | None) -> list[CustomerToken]:
    """Parse the customer-managed keys file; a bad entry is a clear error."""
    if path is None:
        return []
    try:
        document = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigurationError(
            f"customer keys file {path} cannot be read as JSON ({type(error).__name__})"
        ) from None
    if not isinstance(document, dict):
        raise ConfigurationError(f"customer keys file {path} must be a JSON object")
    tokens: list[CustomerToken] = []
    for tenant_id, entry in document.items():
        where = f"customer keys file {path}, tenant {tenant_id!r}"
        if not _TENANT_ID.fullmatch(tenant_id) or not isinstance(entry, dict):
            raise ConfigurationError(f"{where}: keys must be tenant ids, values objects")
        missing = {"name", "module", "token_label", "pin_file"} - set(entry)
        if missing:
            raise ConfigurationError(f"{where}: missing {sorted(missing)}")
        if not _CMK_NAME.fullmatch(str(entry["name"])):
            raise ConfigurationError(
                f"{where}: name must be 'cmk-' then up to 28 lowercase letters, digits or '-'"
            )
        tokens.append(
            CustomerToken(
                tenant_id,
                str(entry["name"]),
                str(entry["module"]),
                str(entry["token_label"]),
                Path(entry["pin_file"]),
            )
        )
    names = [t.name for t in tokens]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"customer keys file {path}: provider names must be unique")
    return tokens


def open_key_service(
    settings: Settings,
    db: Database,
    *,
    environ: Mapping[str, str] | None = None,
    approval_gate: ApprovalGate | None = None,
) -> KeyService:
    """The key service over the configured providers."""
    platform = platform_provider(settings, environ)
    envelope = Envelope(platform, cache_ttl_seconds=settings.key_cache_seconds)
    tenants: dict[str, str] = {}
    for token in customer_tokens(settings.customer_keys_file):
        provider = Pkcs11Provider.from_pin_file(
            token.module, token.token_label, token.pin_file, name=token.name
        )
        envelope.add_provider(provider, cached=False)
        tenants[token.tenant_id] = token.name
    return KeyService(
        db,
        envelope,
        default_provider=platform.name,
        tenant_providers=tenants,
        approval_gate=approval_gate,
    )
