"""PKCS#11 key provider: key-encryption keys that never leave an HSM.

Each KEK version is an AES-256 secret key generated inside the token
(``C_GenerateKey``) as a token object that is private, sensitive,
non-extractable and non-copyable, usable only to wrap and unwrap keys. Data
keys are wrapped with ``CKM_AES_KEY_WRAP`` (RFC 3394, NIST SP 800-38F "KW"),
the same construction as the local keyring, so a wrapped DEK is 40 bytes:

* wrap: the DEK is imported as a short-lived session object, wrapped by the
  token (``C_WrapKey``) and destroyed;
* unwrap: ``C_UnwrapKey`` into a short-lived session object whose value the
  host reads (the data itself is decrypted here, with AES-GCM), destroyed
  right after;
* rewrap: unwrapped into a *sensitive* session object and wrapped again under
  the new version, so the DEK never enters this process.

Objects in the token. A key id ``pkcs11:ten_A.prj_B.payload:v2`` is held as
the secret key labelled ``<label_prefix><key id>``
(``qustody/pkcs11:ten_A.prj_B.payload:v2``; the whole key id, so providers
of several names can share a token), with ``CKA_ID`` the first 16 bytes of
SHA-256 of that label. A key a customer created beforehand under that label
("bring your own key") is adopted if it is an AES-256 key that is sensitive,
non-extractable and allowed to wrap and unwrap.

Failures. A key that is missing, destroyed or disabled in the token, or a
token that no longer accepts the PIN, raises
:class:`~qustody.crypto.errors.KeyUnavailable` on the next use (wrapping
needs ``CKA_WRAP``, unwrapping ``CKA_UNWRAP``: a key with only ``CKA_WRAP``
turned off still opens what it protects). A wrapped key that fails RFC 3394's
integrity check raises :class:`~qustody.crypto.errors.DecryptionError`. A
PIN the token rejected is not tried again in this process, since every wrong
attempt brings a PIN lockout closer. The PIN, data keys and wrapped keys
never appear in an error, a log line or a ``repr``.

Threads and processes. python-pkcs11 initialises a module with
``C_Initialize(NULL)``, which promises the library that it will not be
called from two threads at once (SoftHSM2 then turns its own locking off).
Every call into a module therefore holds that module's lock, shared by every
provider over it in this process; each operation (import, wrap, destroy)
runs whole under it. Each token is logged in once per process, through one
session that every provider over that token shares. KEK object handles are
cached per key id and forgotten when a call fails; before wrapping, the
cached handle's label is checked, so new data is never wrapped under a
handle the token has since given to another object. A child created by
``os.fork()`` re-initialises the module on first use, as PKCS#11 requires,
and logs in again.

Several tokens of one module (the platform's and a customer's, in two
slots) work side by side: python-pkcs11 loads a library once per process
and each provider finds its token by label. SoftHSM2 reads ``SOFTHSM2_CONF``
and lists its tokens when the module is initialised; a provider whose token
is not listed re-initialises the module once (:func:`reinitialize_module`)
before giving up, and the other providers over it log in again.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.types import UnwrapMixin, WrapMixin

from qustody.crypto.errors import DecryptionError, KeyUnavailable
from qustody.crypto.files import check_private
from qustody.crypto.interfaces import KeyMaterial, key_id, parse_key_id
from qustody.domain.errors import ConfigurationError

__all__ = ["HsmError", "Pkcs11Provider", "reinitialize_module"]

log = logging.getLogger(__name__)

DEFAULT_NAME: Final = "pkcs11"
DEFAULT_LABEL_PREFIX: Final = "qustody/"
KEY_BYTES: Final = 32
WRAPPED_BYTES: Final = KEY_BYTES + 8  # RFC 3394: one 64-bit block longer
_ID_BYTES: Final = 16
_WRAP: Final = Mechanism.AES_KEY_WRAP
_NO_CAPABILITIES: Final = MechanismFlag(0)

#: The session (and with it the login) is gone: log in again and retry once.
_SESSION_LOST: Final = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.UserNotLoggedIn,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
)
#: The token refused the PIN: logging in again would only count down to a lockout.
_PIN_REFUSED: Final = (
    p11.PinIncorrect,
    p11.PinInvalid,
    p11.PinLenRange,
    p11.PinLocked,
    p11.PinExpired,
    p11.UserPinNotInitialized,
)
#: A cached object handle no longer names the key: look it up again.
_STALE_HANDLE: Final = (
    p11.KeyHandleInvalid,
    p11.ObjectHandleInvalid,
    p11.WrappingKeyHandleInvalid,
    p11.UnwrappingKeyHandleInvalid,
)
#: How tokens report a wrapped key that fails its integrity check. SoftHSM2
#: says CKR_GENERAL_ERROR; it counts only once the key itself checks out.
_BAD_WRAPPED: Final = (
    p11.WrappedKeyInvalid,
    p11.WrappedKeyLenRange,
    p11.EncryptedDataInvalid,
    p11.EncryptedDataLenRange,
    p11.GeneralError,
)
#: What a key must be to serve as a KEK (read in one C_GetAttributeValue).
_KEK_ATTRIBUTES: Final = [
    Attribute.KEY_TYPE,
    Attribute.VALUE_LEN,
    Attribute.TOKEN,
    Attribute.SENSITIVE,
    Attribute.EXTRACTABLE,
    Attribute.WRAP,
    Attribute.UNWRAP,
]

_WRAP_AND_UNWRAP: Final = (Attribute.WRAP, Attribute.UNWRAP)
_ATTRIBUTE_NAMES: Final = {Attribute.WRAP: "CKA_WRAP", Attribute.UNWRAP: "CKA_UNWRAP"}

_T = TypeVar("_T")


class HsmError(ConfigurationError):
    """The PKCS#11 provider cannot be used as configured: the module, token
    or PIN is wrong, or a key in the token is not fit to be a KEK."""

    code = "hsm_error"
    title = "HSM key provider error"


class _Retry(Exception):
    """A cached handle went stale; the operation is tried once more."""


class _TokenLogin:
    """The one logged-in session of this process with one token."""

    def __init__(self, label: str, pin: KeyMaterial) -> None:
        self.label = label
        self.pin = pin
        self.session: pkcs11.Session | None = None
        self.generation = -1
        self.users = 0
        #: Set when the token rejected the PIN: never tried again in this
        #: process, since every wrong attempt brings a PIN lockout closer.
        self.refused: type[p11.PKCS11Error] | None = None


class _Module:
    """A PKCS#11 library loaded in this process, and the lock that every
    call into it holds."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.lib = pkcs11.lib(path)
        self.pid = os.getpid()
        self.generation = 0
        self.logins: dict[str, _TokenLogin] = {}

    def check_process(self) -> None:
        """Re-initialise in a child created by ``os.fork()`` (call holding the lock)."""
        if self.pid != os.getpid():
            log.info("PKCS#11 module %s: re-initialising after fork", self.path)
            self.restart()

    def restart(self) -> None:
        """Finalise and initialise the library again (call holding the lock).

        Every session and object handle of this process becomes invalid;
        each login reopens its session on next use.
        """
        with contextlib.suppress(p11.PKCS11Error):  # not initialised (a forked child)
            self.lib.finalize()
        self.lib.initialize()
        self.pid = os.getpid()
        self.generation += 1
        for login in self.logins.values():
            login.session = None  # its handle died with the old initialisation

    def session(self, login: _TokenLogin) -> pkcs11.Session:
        """The logged-in session with ``login``'s token, opened when needed
        (call holding the lock). Raises PKCS11Error subclasses."""
        self.check_process()
        if login.session is not None and login.generation == self.generation:
            return login.session
        login.session = None
        if login.refused is not None:
            raise login.refused
        token = self.lib.get_token(token_label=login.label)
        try:
            session = token.open(rw=True, user_pin=login.pin.reveal().decode("utf-8"))
        except p11.UserAlreadyLoggedIn:
            # Logged in by other code in this process; the login is shared.
            session = token.open(rw=True)
        except _PIN_REFUSED as exc:
            login.refused = type(exc)
            raise
        login.session = session
        login.generation = self.generation
        return session


_modules: dict[str, _Module] = {}
_modules_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time stays held in the child.
    global _modules_lock
    _modules_lock = threading.Lock()
    for module in _modules.values():
        module.lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _module(path: Path | str) -> _Module:
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise HsmError(f"PKCS#11 module {path} does not exist; install the HSM's client library")
    key = str(resolved)
    with _modules_lock:
        module = _modules.get(key)
        if module is None:
            try:
                module = _Module(key)
            except p11.PKCS11Error as exc:
                raise HsmError(f"PKCS#11 module {path} cannot be loaded: {exc}") from None
            _modules[key] = module
        return module


def reinitialize_module(path: Path | str) -> None:
    """Finalise and initialise a loaded PKCS#11 module again.

    Tokens initialised since the module was loaded become visible (SoftHSM2
    lists tokens only at initialisation). Every provider over the module
    logs in again on its next call. Does nothing if it is not loaded.
    """
    with _modules_lock:
        module = _modules.get(str(Path(path).resolve()))
    if module is not None:
        with module.lock:
            module.restart()


class Pkcs11Provider:
    """A :class:`~qustody.crypto.interfaces.KeyProvider` over one PKCS#11
    token.

    ``module`` is the PKCS#11 library, ``token_label`` the label of the token,
    ``pin`` the user PIN (prefer :class:`KeyMaterial`, or use
    :meth:`from_pin_file`). ``name`` is the first part of this provider's key
    ids: ``pkcs11`` for the platform's HSM, ``cmk-<tenant>`` for a customer's
    own token. Logs in at once: a missing module or token or a rejected PIN
    raises :class:`HsmError`.
    """

    def __init__(
        self,
        module: Path | str,
        token_label: str,
        pin: KeyMaterial | str,
        *,
        name: str = DEFAULT_NAME,
        label_prefix: str = DEFAULT_LABEL_PREFIX,
    ) -> None:
        try:
            key_id(name, "probe", 1)
        except ValueError:
            raise HsmError(
                f"PKCS#11 provider name {name!r} must be 1-32 lowercase letters, digits or "
                "'-', starting with a letter"
            ) from None
        if isinstance(pin, str):
            pin = KeyMaterial(pin.encode("utf-8"))
        try:
            text = pin.reveal().decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if not text:
            raise HsmError(f"the PIN for PKCS#11 token {token_label!r} must be non-empty UTF-8")
        self._name = name
        self._token_label = token_label
        self._label_prefix = label_prefix
        self._module = _module(module)
        self._keys: dict[str, pkcs11.SecretKey] = {}
        self._keys_session: pkcs11.Session | None = None
        self._closed = False
        with self._module.lock:
            self._module.check_process()
            login = self._module.logins.get(token_label)
            if login is None or login.refused is not None:
                login = self._module.logins[token_label] = _TokenLogin(token_label, pin)
            elif not hmac.compare_digest(login.pin.reveal(), pin.reveal()):
                raise HsmError(
                    f"PKCS#11 token {token_label!r} is already logged in in this process "
                    "with a different PIN; give every provider over one token the same PIN"
                )
            self._login = login
            self._open()
            self._login.users += 1

    @classmethod
    def from_pin_file(
        cls,
        module: Path | str,
        token_label: str,
        pin_file: Path,
        *,
        name: str = DEFAULT_NAME,
        label_prefix: str = DEFAULT_LABEL_PREFIX,
    ) -> Pkcs11Provider:
        """A provider whose user PIN is read from ``pin_file``: readable by
        its owner only (0600), one line (a trailing newline is ignored)."""
        pin_file = Path(pin_file)
        if not pin_file.is_file():
            raise HsmError(f"PKCS#11 PIN file {pin_file} does not exist")
        check_private(pin_file, "PKCS#11 PIN file")
        pin = KeyMaterial(pin_file.read_bytes().rstrip(b"\r\n"))
        return cls(module, token_label, pin, name=name, label_prefix=label_prefix)

    def __repr__(self) -> str:
        return (
            f"Pkcs11Provider(name={self._name!r}, module={self._module.path!r}, "
            f"token={self._token_label!r})"
        )

    __str__ = __repr__

    @property
    def token_label(self) -> str:
        return self._token_label

    def close(self) -> None:
        """Forget this provider's key handles; the last provider over a token
        logs out of it. Further calls raise KeyUnavailable."""
        with self._module.lock:
            if self._closed:
                return
            self._closed = True
            self._keys.clear()
            self._login.users -= 1
            if self._login.users > 0:
                return
            session, self._login.session = self._login.session, None
            if self._module.logins.get(self._token_label) is self._login:
                del self._module.logins[self._token_label]
            current = self._login.generation == self._module.generation
            if session is not None and current and self._module.pid == os.getpid():
                with contextlib.suppress(p11.PKCS11Error):  # gone with the token
                    session.close()  # logs out

    def __enter__(self) -> Pkcs11Provider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # KeyProvider

    @property
    def name(self) -> str:
        return self._name

    @property
    def is_development(self) -> bool:
        return False

    def create_key(self, ring: str, version: int) -> str:
        wanted = key_id(self._name, ring, version)
        label = self._label(wanted)

        def create(session: pkcs11.Session) -> str:
            found = self._find(session, label)
            if len(found) > 1:
                raise HsmError(self._duplicates(label, len(found)))
            if found:
                unfit, disabled = _kek_problems(found[0], _WRAP_AND_UNWRAP)
                if unfit:
                    raise HsmError(
                        f"PKCS#11 token {self._token_label!r} holds a key labelled {label!r} "
                        f"that cannot be a key-encryption key: {'; '.join(unfit)}. Replace it "
                        "with an AES-256 key that is sensitive, non-extractable and allowed to "
                        "wrap and unwrap"
                    )
                if disabled:
                    raise HsmError(
                        f"the key labelled {label!r} in PKCS#11 token {self._token_label!r} is "
                        f"disabled ({', '.join(disabled)}); enable it to use it"
                    )
                self._keys[wanted] = found[0]  # ours from before, or the customer's own
                log.debug("key %s is in PKCS#11 token %r", label, self._token_label)
                return wanted
            kek = session.generate_key(
                KeyType.AES,
                8 * KEY_BYTES,
                id=hashlib.sha256(label.encode("utf-8")).digest()[:_ID_BYTES],
                label=label,
                store=True,
                capabilities=_NO_CAPABILITIES,
                template={
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.COPYABLE: False,
                    Attribute.WRAP: True,
                    Attribute.UNWRAP: True,
                },
            )
            if not isinstance(kek, pkcs11.SecretKey):
                raise HsmError(f"token {self._token_label!r} generated something other than a key")
            self._keys[wanted] = kek
            log.info("created key %s in PKCS#11 token %r", label, self._token_label)
            return wanted

        self._check(wanted)
        return self._with_session(wanted, create)

    def has_key(self, key_id: str) -> bool:
        """Whether the key is in the token and usable; raises KeyUnavailable
        when the token itself cannot be used."""
        self._check(key_id)
        return self._with_session(
            key_id,
            lambda session: not isinstance(self._lookup(session, key_id, _WRAP_AND_UNWRAP), str),
        )

    def wrap(self, key_id: str, dek: bytes) -> bytes:
        if len(dek) != KEY_BYTES:
            raise ValueError(f"data keys must be {KEY_BYTES} bytes")

        def wrap(session: pkcs11.Session, keks: list[pkcs11.SecretKey]) -> bytes:
            kek = keks[0]
            if kek[Attribute.LABEL] != self._label(key_id):
                raise _Retry  # the handle now names another object
            return _wrap_value(session, kek, dek)

        return self._with_keys([(key_id, Attribute.WRAP)], wrap, unwrapping=False)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        self._check(key_id)
        if len(wrapped) != WRAPPED_BYTES:
            raise DecryptionError

        def unwrap(session: pkcs11.Session, keks: list[pkcs11.SecretKey]) -> bytes:
            dek = _unwrapping(keks[0]).unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                wrapped,
                mechanism=_WRAP,
                capabilities=_NO_CAPABILITIES,
                template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
            )
            try:
                value = dek[Attribute.VALUE]
            finally:
                dek.destroy()
            if not isinstance(value, bytes) or len(value) != KEY_BYTES:
                raise DecryptionError
            return value

        return self._with_keys([(key_id, Attribute.UNWRAP)], unwrap, unwrapping=True)

    def rewrap(self, key_id: str, wrapped: bytes, new_key_id: str) -> bytes:
        self._check(key_id)
        self._check(new_key_id)
        if len(wrapped) != WRAPPED_BYTES:
            raise DecryptionError

        def rewrap(session: pkcs11.Session, keks: list[pkcs11.SecretKey]) -> bytes:
            old, new = keks
            if new[Attribute.LABEL] != self._label(new_key_id):
                raise _Retry
            dek = _unwrapping(old).unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                wrapped,
                mechanism=_WRAP,
                capabilities=_NO_CAPABILITIES,
                template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True},
            )
            try:
                return _wrapping(new).wrap_key(dek, mechanism=_WRAP)
            finally:
                dek.destroy()

        return self._with_keys(
            [(key_id, Attribute.UNWRAP), (new_key_id, Attribute.WRAP)], rewrap, unwrapping=True
        )

    def destroy_key(self, key_id: str) -> bool:
        self._check(key_id)
        label = self._label(key_id)

        def destroy(session: pkcs11.Session) -> bool:
            self._keys.pop(key_id, None)
            found = self._find(session, label)
            for kek in found:
                kek.destroy()
            if found:
                log.info("destroyed key %s in PKCS#11 token %r", label, self._token_label)
            return bool(found)

        return self._with_session(key_id, destroy)

    # internals

    def _label(self, key_id: str) -> str:
        return self._label_prefix + key_id

    def _check(self, key_id: str) -> None:
        ref = parse_key_id(key_id)
        if ref is None or ref.provider != self._name:
            raise KeyUnavailable(
                key_id, f"it does not belong to the {self._name} provider ({self._token_label!r})"
            )
        if self._closed:
            raise KeyUnavailable(key_id, f"the {self._name} key provider was closed")

    def _open(self) -> None:
        """Log in at construction, turning failures into HsmError."""
        try:
            session = self._module.session(self._login)
            mechanisms = session.token.slot.get_mechanisms()
        except p11.NoSuchToken:
            self._module.restart()  # it may have been initialised since the module loaded
            try:
                session = self._module.session(self._login)
                mechanisms = session.token.slot.get_mechanisms()
            except p11.PKCS11Error as exc:
                self._forget_login()
                raise HsmError(self._login_problem(exc)) from None
        except p11.PKCS11Error as exc:
            self._forget_login()
            raise HsmError(self._login_problem(exc)) from None
        if _WRAP not in mechanisms:
            self._forget_login()
            raise HsmError(
                f"PKCS#11 token {self._token_label!r} does not offer CKM_AES_KEY_WRAP "
                "(RFC 3394), which this provider wraps keys with"
            )

    def _forget_login(self) -> None:
        if self._login.users == 0 and self._module.logins.get(self._token_label) is self._login:
            del self._module.logins[self._token_label]

    def _login_problem(self, exc: p11.PKCS11Error) -> str:
        token = f"PKCS#11 token {self._token_label!r}"
        if isinstance(exc, p11.NoSuchToken):
            return f"no {token} in module {self._module.path}; check the token label"
        if isinstance(exc, p11.MultipleTokensReturned):
            return f"more than one {token} in module {self._module.path}; labels must be unique"
        if isinstance(exc, p11.PinIncorrect | p11.PinInvalid | p11.PinLenRange):
            return (
                f"{token} rejected the PIN; configure the right PIN and restart (a rejected "
                "PIN is not tried again, so as not to lock the token)"
            )
        if isinstance(exc, p11.PinLocked):
            return f"the user PIN of {token} is locked; its security officer must unlock it"
        if isinstance(exc, p11.PinExpired | p11.UserPinNotInitialized):
            return f"the user PIN of {token} is expired or not set; set it with the HSM's tools"
        return f"cannot log in to {token} ({_rv_name(exc)})"

    def _session(self, key_id: str) -> pkcs11.Session:
        """The logged-in session (call holding the module lock); key handles
        cached under another session are forgotten."""
        try:
            session = self._module.session(self._login)
        except p11.PKCS11Error as exc:
            raise KeyUnavailable(key_id, self._login_problem(exc)) from None
        if session is not self._keys_session:
            self._keys.clear()
            self._keys_session = session
        return session

    def _with_session(self, key_id: str, action: Callable[[pkcs11.Session], _T]) -> _T:
        """Run ``action`` holding the module lock; a lost session is reopened
        and a stale handle looked up again, once."""
        lost = "a stale key handle"
        for attempt in (1, 2):
            with self._module.lock:
                session = self._session(key_id)
                try:
                    return action(session)
                except _SESSION_LOST as exc:
                    self._keys.clear()
                    if self._login.session is session:
                        self._login.session = None
                    lost = _rv_name(exc)
                    log.warning(
                        "PKCS#11 token %r: session lost (%s), logging in again%s",
                        self._token_label,
                        lost,
                        "" if attempt == 1 else " failed",
                    )
                except _Retry:
                    self._keys.clear()
                except p11.PKCS11Error as exc:
                    self._keys.clear()
                    raise KeyUnavailable(
                        key_id,
                        f"PKCS#11 token {self._token_label!r} failed ({_rv_name(exc)})",
                    ) from None
        raise KeyUnavailable(key_id, f"PKCS#11 token {self._token_label!r} keeps failing ({lost})")

    def _with_keys(
        self,
        uses: list[tuple[str, Attribute]],
        action: Callable[[pkcs11.Session, list[pkcs11.SecretKey]], _T],
        *,
        unwrapping: bool,
    ) -> _T:
        """Run ``action`` with the KEKs of ``uses`` (a key id and the
        capability needed of it), mapping token errors to KeyUnavailable and
        DecryptionError."""
        for key, _ in uses:
            self._check(key)

        def run(session: pkcs11.Session) -> _T:
            keks = [self._kek(session, key, use) for key, use in uses]
            try:
                return action(session, keks)
            except (*_SESSION_LOST, _Retry, DecryptionError):
                raise
            except p11.PKCS11Error as exc:
                # Was it the key (destroyed, disabled) or the input?
                for (key, use), kek in zip(uses, keks, strict=True):
                    found = self._lookup(session, key, (use,))
                    if isinstance(found, str):
                        raise KeyUnavailable(key, found) from None
                    if found.handle != kek.handle:
                        raise _Retry from None  # the cached handle went stale
                if unwrapping and isinstance(exc, _BAD_WRAPPED):
                    raise DecryptionError from None
                raise KeyUnavailable(
                    uses[0][0],
                    f"PKCS#11 token {self._token_label!r} refused the operation ({_rv_name(exc)})",
                ) from None

        return self._with_session(uses[0][0], run)

    def _find(self, session: pkcs11.Session, label: str) -> list[pkcs11.SecretKey]:
        return [
            obj
            for obj in session.get_objects(
                {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}
            )
            if isinstance(obj, pkcs11.SecretKey)
        ]

    def _duplicates(self, label: str, count: int) -> str:
        return (
            f"token {self._token_label!r} holds {count} keys labelled {label!r}; remove all "
            "but the one that wrapped the stored data keys"
        )

    def _kek(self, session: pkcs11.Session, key_id: str, use: Attribute) -> pkcs11.SecretKey:
        """The KEK of ``key_id``, cached or found; KeyUnavailable when it is
        missing, duplicated, or unfit for ``use`` (CKA_WRAP or CKA_UNWRAP)."""
        kek = self._keys.get(key_id)
        if kek is not None:
            return kek
        found = self._lookup(session, key_id, (use,))
        if isinstance(found, str):
            raise KeyUnavailable(key_id, found)
        return found

    def _lookup(
        self, session: pkcs11.Session, key_id: str, uses: tuple[Attribute, ...]
    ) -> pkcs11.SecretKey | str:
        """Find and check the KEK of ``key_id`` (and cache it), or say why it
        cannot be used."""
        self._keys.pop(key_id, None)
        label = self._label(key_id)
        found = self._find(session, label)
        if not found:
            return (
                f"the key is missing from PKCS#11 token {self._token_label!r} (destroyed, or "
                "never created)"
            )
        if len(found) > 1:
            return self._duplicates(label, len(found))
        unfit, disabled = _kek_problems(found[0], uses)
        token = f"PKCS#11 token {self._token_label!r}"
        if unfit:
            return f"the key in {token} cannot be a key-encryption key: {'; '.join(unfit)}"
        if disabled:
            return f"the key is disabled in {token} ({', '.join(disabled)})"
        self._keys[key_id] = found[0]
        return found[0]


def _wrap_value(session: pkcs11.Session, kek: pkcs11.SecretKey, dek: bytes) -> bytes:
    """Wrap raw key bytes: import them as a session object, wrap, destroy."""
    obj = session.create_object(
        {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.VALUE: dek,
            Attribute.TOKEN: False,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: True,
            Attribute.ENCRYPT: False,
            Attribute.DECRYPT: False,
            Attribute.SIGN: False,
            Attribute.VERIFY: False,
            Attribute.WRAP: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }
    )
    try:
        if not isinstance(obj, pkcs11.SecretKey):
            raise HsmError("the PKCS#11 token did not import a data key as a secret key")
        return _wrapping(kek).wrap_key(obj, mechanism=_WRAP)
    finally:
        obj.destroy()


def _wrapping(kek: pkcs11.SecretKey) -> WrapMixin:
    if not isinstance(kek, WrapMixin):
        raise _Retry  # looked up while CKA_WRAP was false: look it up again
    return kek


def _unwrapping(kek: pkcs11.SecretKey) -> UnwrapMixin:
    if not isinstance(kek, UnwrapMixin):
        raise _Retry  # looked up while CKA_UNWRAP was false: look it up again
    return kek


def _kek_problems(
    kek: pkcs11.SecretKey, uses: tuple[Attribute, ...]
) -> tuple[list[str], list[str]]:
    """Why ``kek`` cannot serve as a key-encryption key (it never can), and
    which of ``uses`` (CKA_WRAP, CKA_UNWRAP) are switched off."""
    attributes: dict[Attribute, Any] = kek.get_attributes(_KEK_ATTRIBUTES)
    unfit = []
    if attributes.get(Attribute.KEY_TYPE) != KeyType.AES:
        unfit.append("it is not an AES key")
    elif attributes.get(Attribute.VALUE_LEN) != KEY_BYTES:
        unfit.append(f"it is not {8 * KEY_BYTES} bits long")
    if attributes.get(Attribute.TOKEN) is not True:
        unfit.append("it is a session object (CKA_TOKEN is false)")
    if attributes.get(Attribute.SENSITIVE) is not True:
        unfit.append("its value can be read (CKA_SENSITIVE is false)")
    if attributes.get(Attribute.EXTRACTABLE) is not False:
        unfit.append("it can be exported (CKA_EXTRACTABLE is true)")
    disabled = [
        f"{_ATTRIBUTE_NAMES[use]} is false" for use in uses if attributes.get(use) is not True
    ]
    return unfit, disabled


def _rv_name(exc: BaseException) -> str:
    """A PKCS#11 error's name; never its arguments."""
    if type(exc) is p11.PKCS11Error:
        return str(exc)  # "Unmapped error code 0x68": a return value, no data
    return type(exc).__name__
