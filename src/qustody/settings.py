"""Configuration, read once from the environment (``QUSTODY_*``).

Production mode refuses development conveniences: the local keyring, the
demo tenant, SQLite, a missing signing key file. Unknown ``QUSTODY_*``
variables are refused in production so a typo cannot silently fall back to a
default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from qustody.domain.errors import ConfigurationError

Mode = Literal["development", "production"]


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    cpu_seconds: int = 120
    memory_mb: int = 2048
    wall_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class Settings:
    mode: Mode = "development"
    data_dir: Path = Path(".qustody")
    database_url: str = ""
    #: Where the Ed25519 key that signs Qustody tokens lives (PEM, 0600).
    signing_key_file: Path | None = None
    #: ``local`` (a keyring file; development only) or ``pkcs11`` (an HSM).
    key_provider: Literal["local", "pkcs11"] = "local"
    #: The PKCS#11 library, the token's label, and a file (0600) holding the
    #: user PIN (or ``QUSTODY_PKCS11_PIN``), for ``key_provider=pkcs11``.
    pkcs11_module: str = ""
    pkcs11_token_label: str = ""
    pkcs11_pin_file: Path | None = None
    #: JSON naming tenants' own HSM tokens (customer-managed keys).
    customer_keys_file: Path | None = None
    #: How long an unwrapped data key may stay cached in memory (0: never).
    key_cache_seconds: float = 60.0
    #: How often a worker looks for data keys to move after a rotation.
    rewrap_seconds: float = 5.0
    keyring_file: Path | None = None
    master_key_file: Path | None = None
    issuer: str = "qustody"
    audience: str = "qustody-api"
    token_max_ttl_seconds: int = 900
    public_url: str = "http://127.0.0.1:8080"
    #: Run a worker beside the API (embedded mode): a child process of ``serve``.
    embedded_worker: bool = True
    #: API processes sharing the listening port (``serve``); each handles
    #: requests on its own interpreter, so more than one uses more cores.
    api_processes: int = 1
    worker_slots: int = max(1, min(4, os.cpu_count() or 1))
    #: A running job whose worker stopped renewing its lease for this long is re-queued.
    lease_seconds: float = 30.0
    #: Safety net only: workers are woken by notifications, not by this poll.
    idle_poll_seconds: float = 5.0
    #: Jobs one backend runs at once, unless a platform admin set its own
    #: limit (``qustody backend concurrency``); 0: no limit but the workers' slots.
    backend_concurrency: int = 0
    #: A random delay of up to this many milliseconds before a worker claims a
    #: job, so start times do not reveal when other tenants' jobs end (0: none).
    start_jitter_ms: int = 0
    #: The longest lifetime a session may be given (8 hours by default).
    session_max_ttl_seconds: int = 28800
    #: The longest reservation of a backend a tenant admin may take, in hours.
    reservation_max_hours: int = 24
    #: A backend with at least this many jobs queued (all tenants) shows as busy.
    busy_queue_depth: int = 10
    #: The audit log's checkpoint-signing key (a C2SP signer key, 0600).
    audit_key_file: Path | None = None
    #: The audit log's origin, fixed when its key is made (default: the
    #: public URL's host and path plus ``/audit``).
    audit_origin: str = ""
    #: A worker signs a checkpoint this often when the log has grown.
    audit_checkpoint_seconds: float = 5.0
    #: JSON naming the OpenID Connect providers people sign in with
    #: (docs/identity-oidc.md); none: no single sign-on.
    oidc_providers_file: Path | None = None
    #: Clock skew allowed on external JWTs' exp, nbf and iat (ID tokens, CI tokens).
    jwt_leeway_seconds: int = 30
    #: An unknown key id makes Qustody fetch an issuer's JWKS again at most this often.
    jwks_min_refresh_seconds: float = 30.0
    #: The longest lifetime an API key may be given, in days (at most 90).
    api_key_max_days: int = 90
    #: DPoP proofs must carry a server nonce (RFC 9449 section 8), so none can
    #: be made in advance; clients retry once with the nonce they are given.
    dpop_nonces: bool = False
    #: MFA step-up (RFC 9470) for privileged actions by people: on by default
    #: in production (where it cannot be turned off), off by default in
    #: development, with a warning (QUSTODY_STEP_UP=true turns it on).
    step_up: bool | None = None
    #: Approvals (docs/approvals.md): the platform's @approvals policies (prod
    #: QPU jobs, restricted exports, key rotation, policy changes) load by
    #: default in production (where they cannot be turned off), and are off by
    #: default in development, with a warning (QUSTODY_APPROVALS=true turns
    #: them on). Tenants' own @approvals policies apply either way.
    approvals: bool | None = None
    #: Just-in-time elevation: how long an approved elevation lasts at most
    #: (policy may narrow it), and break-glass at most.
    elevation_max_seconds: int = 8 * 3600
    breakglass_max_seconds: int = 3600
    #: Local accounts (password and TOTP kept by the gateway) for embedded mode
    #: without an identity provider: a development convenience, on by default in
    #: development (with a warning), refused in production.
    local_accounts: bool | None = None
    #: Rate limits (token buckets, docs/rate-limits.md): a rate in requests per
    #: second and a burst, per principal and per tenant (authenticated calls),
    #: per client address (anonymous calls and failed authentications), and
    #: for sign-in and token endpoints per address and per account (shared by
    #: every API process through the database).
    rate_limit_principal_per_second: float = 20.0
    rate_limit_principal_burst: int = 200
    rate_limit_tenant_per_second: float = 100.0
    rate_limit_tenant_burst: int = 1000
    rate_limit_address_per_second: float = 5.0
    rate_limit_address_burst: int = 100
    rate_limit_sign_in_per_second: float = 0.1
    rate_limit_sign_in_burst: int = 10
    #: At most this many in-memory buckets per API process (idle ones go first).
    rate_limit_max_buckets: int = 100_000
    #: Webhook delivery: one attempt's time limit, and attempts before giving up.
    webhook_timeout_seconds: float = 10.0
    webhook_max_attempts: int = 8
    #: How often a worker looks for alerts to deliver.
    webhook_poll_seconds: float = 2.0
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)

    @property
    def local_accounts_enabled(self) -> bool:
        """Whether ``POST /v1/auth/local`` and the local-account routes work."""
        return self.mode != "production" if self.local_accounts is None else self.local_accounts

    @property
    def approvals_enforced(self) -> bool:
        """Whether the platform's approval policies are loaded."""
        return self.mode == "production" if self.approvals is None else self.approvals

    @property
    def step_up_enforced(self) -> bool:
        """Whether the step-up policies are loaded (``step_up``, else the mode's default)."""
        return self.mode == "production" if self.step_up is None else self.step_up

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'qustody.db').resolve()}"

    @property
    def resolved_signing_key_file(self) -> Path:
        return self.signing_key_file or self.data_dir / "token-signing-key.pem"

    @property
    def resolved_audit_key_file(self) -> Path:
        return self.audit_key_file or self.data_dir / "audit-log.key"

    @property
    def resolved_keyring_file(self) -> Path:
        return self.keyring_file or self.data_dir / "keyring.json"

    @property
    def resolved_master_key_file(self) -> Path:
        return self.master_key_file or self.data_dir / "master.key"

    def environment(self) -> dict[str, str]:
        """These settings as ``QUSTODY_*`` variables, for a child process."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "sandbox":
                for key, attr in _SANDBOX_KEYS.items():
                    env[_ENV_PREFIX + key] = str(getattr(value, attr))
            elif value is None or value == "":
                continue
            elif isinstance(value, bool):
                env[_ENV_PREFIX + f.name.upper()] = "true" if value else "false"
            else:
                env[_ENV_PREFIX + f.name.upper()] = str(value)
        return env

    def check(self) -> None:
        """Refuse settings that are unsafe for the mode."""
        if self.token_max_ttl_seconds > 900 or self.token_max_ttl_seconds < 30:
            raise ConfigurationError(
                f"QUSTODY_TOKEN_MAX_TTL_SECONDS is {self.token_max_ttl_seconds}; "
                "it must be between 30 and 900 (15 minutes)."
            )
        if not 1 <= self.api_processes <= MAX_API_PROCESSES:
            raise ConfigurationError(
                f"the number of API processes (--api-processes, QUSTODY_API_PROCESSES) is "
                f"{self.api_processes}; it must be between 1 and {MAX_API_PROCESSES} "
                "(one or two per core is plenty)."
            )
        if not 0.1 <= self.audit_checkpoint_seconds <= 3600:
            raise ConfigurationError(
                f"QUSTODY_AUDIT_CHECKPOINT_SECONDS is {self.audit_checkpoint_seconds}; it "
                "must be between 0.1 and 3600 (witnesses expect a checkpoint every few seconds)."
            )
        if self.key_provider not in ("local", "pkcs11"):
            raise ConfigurationError(
                f"QUSTODY_KEY_PROVIDER is {self.key_provider!r}; use 'pkcs11' (an HSM) or "
                "'local' (a keyring file, development only)."
            )
        if self.key_provider == "pkcs11" and not (self.pkcs11_module and self.pkcs11_token_label):
            raise ConfigurationError(
                "QUSTODY_KEY_PROVIDER=pkcs11 needs QUSTODY_PKCS11_MODULE (the PKCS#11 library) "
                "and QUSTODY_PKCS11_TOKEN_LABEL (the token's label), and the user PIN in "
                "QUSTODY_PKCS11_PIN_FILE or QUSTODY_PKCS11_PIN."
            )
        if not 0.05 <= self.rewrap_seconds <= 3600:
            raise ConfigurationError(
                f"QUSTODY_REWRAP_SECONDS is {self.rewrap_seconds}; it must be between 0.05 "
                "and 3600."
            )
        if not 0 <= self.key_cache_seconds <= 3600:
            raise ConfigurationError(
                f"QUSTODY_KEY_CACHE_SECONDS is {self.key_cache_seconds}; it must be between 0 "
                "and 3600."
            )
        if not 0 <= self.jwt_leeway_seconds <= 300:
            raise ConfigurationError(
                f"QUSTODY_JWT_LEEWAY_SECONDS is {self.jwt_leeway_seconds}; it must be between 0 "
                "and 300 (a few seconds of clock skew is plenty)."
            )
        if not 0 <= self.jwks_min_refresh_seconds <= 3600:
            raise ConfigurationError(
                f"QUSTODY_JWKS_MIN_REFRESH_SECONDS is {self.jwks_min_refresh_seconds}; it must "
                "be between 0 and 3600."
            )
        if not 1 <= self.api_key_max_days <= 90:
            raise ConfigurationError(
                f"QUSTODY_API_KEY_MAX_DAYS is {self.api_key_max_days}; API keys must expire, "
                "within 1 to 90 days: set a value in that range."
            )
        for name in ("principal", "tenant", "address", "sign_in"):
            rate = getattr(self, f"rate_limit_{name}_per_second")
            burst = getattr(self, f"rate_limit_{name}_burst")
            if not (0 < rate <= 1_000_000 and 1 <= burst <= 10_000_000):
                raise ConfigurationError(
                    f"QUSTODY_RATE_LIMIT_{name.upper()}_PER_SECOND is {rate} and "
                    f"QUSTODY_RATE_LIMIT_{name.upper()}_BURST is {burst}; the rate must be "
                    "above 0 and the burst at least 1."
                )
        if not 1_000 <= self.rate_limit_max_buckets <= 10_000_000:
            raise ConfigurationError(
                f"QUSTODY_RATE_LIMIT_MAX_BUCKETS is {self.rate_limit_max_buckets}; it must be "
                "between 1000 and 10000000."
            )
        if not (0.1 <= self.webhook_timeout_seconds <= 60 and 1 <= self.webhook_max_attempts <= 50):
            raise ConfigurationError(
                f"QUSTODY_WEBHOOK_TIMEOUT_SECONDS is {self.webhook_timeout_seconds} and "
                f"QUSTODY_WEBHOOK_MAX_ATTEMPTS is {self.webhook_max_attempts}; the timeout must "
                "be 0.1 to 60 seconds and the attempts 1 to 50."
            )
        for name, value, low, high in (
            ("BACKEND_CONCURRENCY", self.backend_concurrency, 0, 10_000),
            ("START_JITTER_MS", self.start_jitter_ms, 0, 60_000),
            ("SESSION_MAX_TTL_SECONDS", self.session_max_ttl_seconds, 60, 7 * 86400),
            ("RESERVATION_MAX_HOURS", self.reservation_max_hours, 1, 24 * 31),
            ("BUSY_QUEUE_DEPTH", self.busy_queue_depth, 1, 1_000_000),
        ):
            if not low <= value <= high:
                raise ConfigurationError(
                    f"QUSTODY_{name} is {value}; it must be between {low} and {high}."
                )
        if self.mode != "production":
            return
        if self.local_accounts:
            raise ConfigurationError(
                "QUSTODY_LOCAL_ACCOUNTS=true is refused in production mode: local accounts "
                "(passwords and TOTP kept by the gateway) are a development convenience. Sign "
                "people in through an OpenID Connect provider and remove the variable."
            )
        if self.step_up is False:
            raise ConfigurationError(
                "QUSTODY_STEP_UP=false is refused in production mode: privileged actions "
                "(policy and key changes, QPU and production backends, restricted data, "
                "exports) need a fresh multi-factor sign-in there. Remove the variable."
            )
        if self.approvals is False:
            raise ConfigurationError(
                "QUSTODY_APPROVALS=false is refused in production mode: production QPU jobs, "
                "restricted exports, key rotation and policy changes need approval there. "
                "Remove the variable."
            )
        if self.resolved_database_url.startswith("sqlite"):
            raise ConfigurationError(
                "production mode needs PostgreSQL: set QUSTODY_DATABASE_URL to a "
                "postgresql+psycopg:// URL."
            )
        if self.key_provider == "local":
            raise ConfigurationError(
                "the local keyring is a development key provider and is refused in "
                "production mode; configure an HSM key provider."
            )


_ENV_PREFIX = "QUSTODY_"
MAX_API_PROCESSES = 64
_SANDBOX_KEYS = {
    "SANDBOX_CPU_SECONDS": "cpu_seconds",
    "SANDBOX_MEMORY_MB": "memory_mb",
    "SANDBOX_WALL_SECONDS": "wall_seconds",
}
#: Variables read elsewhere (by the key provider, the CLI), not settings fields.
_OTHER_KEYS = {"MASTER_KEY", "PKCS11_PIN", "URL", "TOKEN", "CONFIG_DIR", "DPOP_KEY"}


#: Settings whose default (``None``) depends on the mode; their values are booleans.
_MODE_DEFAULT_FLAGS = frozenset({"step_up", "local_accounts", "approvals"})


def _convert(raw: str, current: object, name: str) -> object:
    if name in _MODE_DEFAULT_FLAGS:
        current = False
    try:
        if isinstance(current, bool):
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"1", "true", "yes"}
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise ConfigurationError(
            f"{_ENV_PREFIX}{name.upper()} is {raw!r}, which is not a valid "
            f"{type(current).__name__}."
        ) from None
    if name.endswith(("_file", "_dir")):
        return Path(raw)
    return raw


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    env = os.environ if environ is None else environ
    base = Settings()
    values: dict[str, object] = {}
    sandbox: dict[str, object] = {}
    known = {f.name for f in fields(Settings)} - {"sandbox"}
    unknown: list[str] = []
    for key, raw in env.items():
        if not key.startswith(_ENV_PREFIX):
            continue
        name = key[len(_ENV_PREFIX) :]
        if name in _SANDBOX_KEYS:
            attr = _SANDBOX_KEYS[name]
            sandbox[attr] = _convert(raw, getattr(base.sandbox, attr), attr)
        elif name.lower() in known:
            values[name.lower()] = _convert(raw, getattr(base, name.lower()), name.lower())
        elif name not in _OTHER_KEYS:
            unknown.append(key)
    values.update(overrides)
    if sandbox:
        values["sandbox"] = SandboxSettings(**sandbox)  # type: ignore[arg-type]
    settings = Settings(**values)  # type: ignore[arg-type]
    if unknown and settings.mode == "production":
        raise ConfigurationError(
            f"unknown configuration variables {sorted(unknown)}; remove them or fix the spelling."
        )
    settings.check()
    return settings
