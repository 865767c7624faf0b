"""SoftHSM2 for the PKCS#11 tests (fixtures live in conftest.py).

A test run gets its own token directory and configuration file; tokens are
initialised in it with ``softhsm2-util --init-token --free``. What a
customer or an HSM administrator does to a token (pre-create a key, disable
or destroy it, change the PIN) runs in a separate process through
:func:`token_tool`, as it would in real life: this file doubles as that
tool (``python tests/softhsm.py TOKEN PIN COMMAND ...``).
"""

from __future__ import annotations

import enum
import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Where SoftHSM2's PKCS#11 library is installed (as in scripts/dev.py).
SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
SO_PIN = "so-pin-4711"


def find_module() -> Path | None:
    """SoftHSM2's library: ``SOFTHSM2_MODULE`` if set, else the usual places."""
    override = os.environ.get("SOFTHSM2_MODULE")
    candidates = (override,) if override else SOFTHSM_MODULES
    return next((Path(path) for path in candidates if Path(path).is_file()), None)


def softhsm_problem() -> str | None:
    """Why the PKCS#11 tests cannot run here, or None."""
    if find_module() is None:
        return (
            "SoftHSM2 is not installed (no libsofthsm2.so); `python3 scripts/dev.py test` "
            "installs it as root on Debian, or run: apt-get install softhsm2"
        )
    if shutil.which("softhsm2-util") is None:
        return "softhsm2-util is not on PATH; install the softhsm2 package"
    return None


@dataclass(frozen=True)
class Token:
    """An initialised SoftHSM2 token and its PINs."""

    label: str
    pin: str
    so_pin: str


@dataclass(frozen=True)
class SoftHsm:
    """A private SoftHSM2 installation: token directory and configuration."""

    module: Path
    config: Path
    tokens: Path

    @classmethod
    def create(cls, root: Path, module: Path) -> SoftHsm:
        tokens = root / "tokens"
        tokens.mkdir(mode=0o700, parents=True)
        config = root / "softhsm2.conf"
        config.write_text(
            f"directories.tokendir = {tokens}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n"
        )
        return cls(module=module, config=config, tokens=tokens)

    def environ(self) -> dict[str, str]:
        return dict(os.environ, SOFTHSM2_CONF=str(self.config))

    def init_token(self, prefix: str = "token", *, pin: str | None = None) -> Token:
        """A fresh token labelled ``<prefix>-<random>`` with its own user PIN."""
        token = Token(
            label=f"{prefix}-{secrets.token_hex(4)}",
            pin=pin or f"pin-{secrets.token_hex(8)}",
            so_pin=SO_PIN,
        )
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                token.label,
                "--so-pin",
                token.so_pin,
                "--pin",
                token.pin,
            ],
            check=True,
            capture_output=True,
            env=self.environ(),
        )
        return token

    def token_tool(self, token: Token, *command: str, pin: str | None = None) -> Any:
        """Run :func:`_tool` in another process as the token's owner; returns
        its JSON answer."""
        done = subprocess.run(
            [sys.executable, __file__, token.label, pin or token.pin, *command],
            check=False,
            capture_output=True,
            text=True,
            env=self.environ(),
        )
        if done.returncode != 0:
            raise RuntimeError(f"token tool {command} failed: {done.stderr}")
        return json.loads(done.stdout)


# The token tool (a separate process, like a customer's or operator's own tooling).


def _describe(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, enum.Enum):
        return value.name
    return value if isinstance(value, bool | int | str) else str(value)


def _tool(token_label: str, pin: str, command: str, args: list[str]) -> Any:
    """``set-pin NEW``; ``generate LABEL [bits=N] [attribute=true|false ...]``;
    ``import LABEL value=HEX [attribute=...]``; ``set LABEL attribute=...``;
    ``destroy LABEL``; ``attributes LABEL``."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    module = find_module()
    assert module is not None
    token = pkcs11.lib(str(module)).get_token(token_label=token_label)
    with token.open(rw=True, user_pin=pin) as session:
        if command == "set-pin":
            session.set_pin(pin, args[0])
            return True
        label = args[0]
        settings = dict(item.split("=", 1) for item in args[1:])
        bits = int(settings.pop("bits", "256"))
        value = bytes.fromhex(settings.pop("value", ""))
        template = {Attribute[name.upper()]: text == "true" for name, text in settings.items()}
        query = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}
        found = list(session.get_objects(query))
        base = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.WRAP: True,
            Attribute.UNWRAP: True,
        }
        if command == "generate":
            session.generate_key(KeyType.AES, bits, label=label, template={**base, **template})
            return True
        if command == "import":
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.AES,
                    Attribute.LABEL: label,
                    Attribute.VALUE: value,
                    **base,
                    **template,
                }
            )
            return True
        if command == "set":
            for key in found:
                for attribute, setting in template.items():
                    key[attribute] = setting
            return len(found)
        if command == "destroy":
            for key in found:
                key.destroy()
            return len(found)
        if command == "attributes":  # every readable attribute of each key
            answers = []
            for key in found:
                answer = {}
                for attribute in Attribute:
                    try:
                        answer[attribute.name] = _describe(key[attribute])
                    except (pkcs11.PKCS11Error, NotImplementedError, KeyError, ValueError):
                        continue
                try:
                    key[Attribute.VALUE]
                except pkcs11.PKCS11Error as exc:
                    answer["VALUE"] = f"refused: {type(exc).__name__}"
                answers.append(answer)
            return answers
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    print(json.dumps(_tool(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])))
