"""Sealed exports: HPKE (RFC 9180) with the X-Wing KEM, and the file format.

Besides round trips and every way a file can be damaged, two tests check the
format from the outside: one opens a sealed file with the ``cryptography``
HPKE API directly, following only the format documented in
:mod:`qustody.crypto.sealed`; the other recomputes RFC 9180's key schedule by
hand over an X-Wing decapsulation (draft-connolly-cfrg-xwing-kem) that is
itself checked against the draft's test vector.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import os
import pickle  # noqa: TID251  # only to prove private keys refuse it
import stat
import struct
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from qustody.crypto import sealed
from qustody.crypto.sealed import (
    ENC_BYTES,
    MAGIC,
    PUBLIC_KEY_PREFIX,
    SealedExportCorrupt,
    SealedExportError,
    SealedExportInvalidKey,
    SealedExportTooLarge,
    SealedExportUnsupportedVersion,
    SealedExportWrongKey,
    XWingPrivateKey,
    XWingPublicKey,
    key_fingerprint,
    open_sealed,
    read_private_key,
    read_sealed_header,
    seal,
    write_private_key,
)
from qustody.domain.errors import ConfigurationError, InvalidRequest

# draft-connolly-cfrg-xwing-kem-10, Appendix C, first test vector.
XWING_VECTOR_SEED = bytes.fromhex(
    "7f9c2ba4e88f827d616045507605853ed73b8093f6efbc88eb1a6eacfa66ef26"
)
XWING_VECTOR_PK = bytes.fromhex(
    """
    e2236b35a8c24b39b10aa1323a96a919a2ced88400633a7b07131713fc14b2b5b19cfc3da5fa1a92c49f2551
    3e0fd30d6b1611c9ab9635d7086727a4b7d21d34244e66969cf15b3b2a785329f61b096b277ea037383479a6
    b556de7231fe4b7fa9c9ac24c0699a0018a5253401bacfa905ca816573e56a2d2e067e9b7287533ba13a937d
    edb31fa44baced40769923610034ae31e619a170245199b3c5c39864859fe1b4c9717a07c30495bdfb98a0a0
    02ccf56c1286cef5041dede3c44cf16bf562c7448518026b3d8b9940680abd38a1575fd27b58da063bfac32c
    39c30869374c05c1aeb1898b6b303cc68be455346ee0af699636224a148ca2aea10463111c709f69b69c70ce
    8538746698c4c60a9aef0030c7924ceec42a5d36816f545eae13293460b3acb37ea0e13d70e4aa78686da398
    a8397c08eaf96882113fe4f7bad4da40b0501e1c753efe73053c87014e8661c33099afe8bede414a5b1aa27d
    8392b3e131e9a70c1055878240cad0f40d5fe3cdf85236ead97e2a97448363b2808caafd516cd25052c5c362
    543c2517e4acd0e60ec07163009b6425fc32277acee71c24bab53ed9f29e74c66a0a3564955998d76b96a9a8
    b50d1635a4d7a67eb42df5644d330457293a8042f53cc7a69288f17ed55827e82b28e82665a86a14fbd96645
    eca8172c044f83bc0d8c0b4c8626985631ca87af829068f1358963cb333664ca482763ba3b3bb208577f9ba6
    ac62c25f76592743b64be519317714cb4102cb7b2f9a25b2b4f0615de31decd9ca55026d6da0b65111b16fe5
    2feed8a487e144462a6dba93728f500b6ffc49e515569ef25fed17aff520507368253525860f58be3be61c96
    4604a6ac814e6935596402a520a4670b3d284318866593d15a4bb01c35e3e587ee0c67d2880d6f2407fb7a70
    712b838deb96c5d7bf2b44bcf6038ccbe33fbcf51a54a584fe90083c91c7a6d43d4fb15f48c60c2fd66e0a8a
    ad4ad64e5c42bb8877c0ebec2b5e387c8a988fdc23beb9e16c8757781e0a1499c61e138c21f216c29d076979
    871caa6942bafc090544bee99b54b16cb9a9a364d6246d9f42cce53c66b59c45c8f9ae9299a75d15180c3c95
    2151a91b7a10772429dc4cbae6fcc622fa8018c63439f890630b9928db6bb7f9438ae4065ed34d73d486f3f5
    2f90f0807dc88dfdd8c728e954f1ac35c06c000ce41a0582580e3bb57b672972890ac5e7988e7850657116f1
    b57d0809aaedec0bede1ae148148311c6f7e317346e5189fb8cd635b986f8c0bdd27641c584b778b3a911a80
    be1c9692ab8e1bbb12839573cce19df183b45835bbb55052f9fc66a1678ef2a36dea78411e6c8d60501b4e60
    592d13698a943b509185db912e2ea10be06171236b327c71716094c964a68b03377f513a05bcd99c1f346583
    bb052977a10a12adfc758034e5617da4c1276585e5774e1f3b9978b09d0e9c44d3bc86151c43aad185712717
    340223ac381d21150a04294e97bb13bbda21b5a182b6da969e19a7fd072737fa8e880a53c2428e3d049b7d21
    97405296ddb361912a7bcf4827ced611d0c7a7da104dde4322095339f64a61d5bb108ff0bf4d780cae509fb2
    2c256914193ff7349042581237d522828824ee3bdfd07fb03f1f942d2ea179fe722f06cc03de5b69859edb06
    eff389b27dce59844570216223593d4ba32d9abac8cd049040ef6534
    """
)
XWING_VECTOR_CT = bytes.fromhex(
    """
    b83aa828d4d62b9a83ceffe1d3d3bb1ef31264643c070c5798927e41fb07914a273f8f96e7826cd5375a283d
    7da885304c5de0516a0f0654243dc5b97f8bfeb831f68251219aabdd723bc6512041acbaef8af44265524942
    b902e68ffd23221cda70b1b55d776a92d1143ea3a0c475f63ee6890157c7116dae3f62bf72f60acd2bb8cc31
    ce2ba0de364f52b8ed38c79d719715963a5dd3842d8e8b43ab704e4759b5327bf027c63c8fa857c4908d5a8a
    7b88ac7f2be394d93c3706ddd4e698cc6ce370101f4d0213254238b4a2e8821b6e414a1cf20f6c1244b69904
    6f5a01caa0a1a55516300b40d2048c77cc73afba79afeea9d2c0118bdf2adb8870dc328c5516cc45b1a20581
    41039e2c90a110a9e16b318dfb53bd49a126d6b73f215787517b8917cc01cabd107d06859854ee8b4f9861c2
    26d3764c87339ab16c3667d2f49384e55456dd40414b70a6af841585f4c90c68725d57704ee8ee7ce6e2f9be
    582dbee985e038ffc346ebfb4e22158b6c84374a9ab4a44e1f91de5aac5197f89bc5e5442f51f9a5937b102b
    a3beaebf6e1c58380a4a5fedce4a4e5026f88f528f59ffd2db41752b3a3d90efabe463899b7d40870c530c88
    41e8712b733668ed033adbfafb2d49d37a44d4064e5863eb0af0a08d47b3cc888373bc05f7a33b841bc2587c
    57eb69554e8a3767b7506917b6b70498727f16eac1a36ec8d8cfaf751549f2277db277e8a55a9a5106b23a02
    06b4721fa9b3048552c5bd5b594d6e247f38c18c591aea7f56249c72ce7b117afcc3a8621582f9cf71787e18
    3dee09367976e98409ad9217a497df888042384d7707a6b78f5f7fb8409e3b535175373461b776002d799cba
    d62860be70573ecbe13b246e0da7e93a52168e0fb6a9756b895ef7f0147a0dc81bfa644b088a9228160c0f9a
    cf1379a2941cd28c06ebc80e44e17aa2f8177010afd78a97ce0868d1629ebb294c5151812c583daeb8868522
    0f4da9118112e07041fcc24d5564a99fdbde28869fe0722387d7a9a4d16e1cc8555917e09944aa5ebaaaec2c
    f62693afad42a3f518fce67d273cc6c9fb5472b380e8573ec7de06a3ba2fd5f931d725b493026cb0acbd3fe6
    2d00e4c790d965d7a03a3c0b4222ba8c2a9a16e2ac658f572ae0e746eafc4feba023576f08942278a041fb82
    a70a595d5bacbf297ce2029898a71e5c3b0d1c6228b485b1ade509b35fbca7eca97b2132e7cb6bc465375146
    b7dceac969308ac0c2ac89e7863eb8943015b24314cafb9c7c0e85fe543d56658c213632599efabfc1ec49dd
    8c88547bb2cc40c9d38cbd3099b4547840560531d0188cd1e9c23a0ebee0a03d5577d66b1d2bcb4baaf21cc7
    fef1e03806ca96299df0dfbc56e1b2b43e4fc20c37f834c4af62127e7dae86c3c25a2f696ac8b589dec71d59
    5bfbe94b5ed4bc07d800b330796fda89edb77be0294136139354eb8cd37591578f9c600dd9be8ec6219fdd50
    7adf3397ed4d68707b8d13b24ce4cd8fb22851bfe9d632407f31ed6f7cb1600de56f17576740ce2a32fc5145
    030145cfb97e63e0e41d354274a079d3e6fb2e15
    """
)
XWING_VECTOR_SS = bytes.fromhex("d2df0522128f09dd8e2c92b1e905c793d8f57a54c3da25861f10bf4ca613e384")

SEED = bytes(range(32))
WHEN = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def key() -> XWingPrivateKey:
    return XWingPrivateKey.from_seed(SEED)


@pytest.fixture(scope="module")
def other_key() -> XWingPrivateKey:
    return XWingPrivateKey.generate()


def _seal(key: XWingPrivateKey, plaintext: bytes = b"measurement counts") -> bytes:
    return seal(
        plaintext,
        key.public_key,
        content_type="application/json",
        metadata={"job_id": "job_01", "tenant": "ten_A"},
        created_at=WHEN,
    )


def _parts(data: bytes) -> tuple[bytes, dict[str, object], bytes]:
    """(magic line, header, HPKE output) as the module docstring describes the format."""
    magic, header_line, rest = data.split(b"\n", 2)
    return magic + b"\n", json.loads(header_line), rest


def _with_header(data: bytes, header: dict[str, object]) -> bytes:
    """Replace the header with another canonical one, keeping the ciphertext."""
    magic, _, rest = _parts(data)
    line = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return magic + line.encode("ascii") + b"\n" + rest


# --------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000, 65_536, 1_048_579, 24 * 1024 * 1024])
def test_round_trip(key: XWingPrivateKey, size: int) -> None:
    plaintext = os.urandom(size)
    data = seal(plaintext, key.public_key, content_type="application/zip", metadata={})
    assert len(data) > size + ENC_BYTES + 16
    header, opened = open_sealed(data, key)
    assert opened == plaintext
    assert header.content_type == "application/zip"
    assert header.recipient == key.fingerprint
    assert dict(header.metadata) == {}


def test_header_is_returned_and_readable_without_the_key(key: XWingPrivateKey) -> None:
    data = _seal(key)
    header, _ = open_sealed(data, key)
    assert header == read_sealed_header(data)
    assert header.version == 1
    assert header.created_at == WHEN
    assert dict(header.metadata) == {"job_id": "job_01", "tenant": "ten_A"}
    assert data.startswith(
        b'qustody-sealed/1\n{"content_type":"application/json",'
        b'"created_at":"2026-05-01T12:00:00Z","metadata":{"job_id":"job_01","tenant":"ten_A"},'
        b'"recipient":"' + key.fingerprint.encode() + b'",'
        b'"suite":{"aead":"0x0002","kdf":"0x0001","kem":"0x647a"}}\n'
    )


def test_created_at_is_utc_whole_seconds(key: XWingPrivateKey) -> None:
    local = datetime(2026, 5, 1, 14, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=2)))
    data = seal(b"x", key.public_key, content_type="text/plain", created_at=local)
    assert read_sealed_header(data).created_at == WHEN
    before = datetime.now(UTC).replace(microsecond=0)
    fresh = read_sealed_header(seal(b"x", key.public_key, content_type="text/plain"))
    assert before <= fresh.created_at <= datetime.now(UTC)
    with pytest.raises(ValueError, match="timezone"):
        seal(b"x", key.public_key, content_type="text/plain", created_at=datetime(2026, 1, 1))  # noqa: DTZ001


def test_sealing_is_randomised(key: XWingPrivateKey) -> None:
    assert _seal(key) != _seal(key)


def test_non_ascii_metadata_round_trips(key: XWingPrivateKey) -> None:
    data = seal(b"", key.public_key, content_type="text/csv", metadata={"title": "Ωmega – run"})
    assert data.split(b"\n")[1].isascii()
    assert open_sealed(data, key)[0].metadata["title"] == "Ωmega – run"


# --------------------------------------------------------------------------------------
# Tampering, damage and the wrong key
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("content_type", "application/zip"),
        ("created_at", "2026-05-01T12:00:01Z"),
        ("metadata", {"job_id": "job_02", "tenant": "ten_A"}),
        ("metadata", {"job_id": "job_01"}),
        ("metadata", {"job_id": "job_01", "tenant": "ten_A", "extra": "x"}),
    ],
)
def test_any_header_change_fails_to_open(key: XWingPrivateKey, field: str, value: object) -> None:
    data = _seal(key)
    _, header, _ = _parts(data)
    forged = _with_header(data, {**header, field: value})
    assert read_sealed_header(forged) != read_sealed_header(data)  # it parses ...
    with pytest.raises(SealedExportCorrupt) as caught:  # ... but does not open
        open_sealed(forged, key)
    assert caught.value.code == "sealed_export_corrupt"
    assert "changed or damaged" in caught.value.detail


def test_header_recipient_change_is_refused(
    key: XWingPrivateKey, other_key: XWingPrivateKey
) -> None:
    data = _seal(key)
    _, header, _ = _parts(data)
    # Claiming another recipient: the opener is told to use that key ...
    forged = _with_header(data, {**header, "recipient": other_key.fingerprint})
    with pytest.raises(SealedExportWrongKey):
        open_sealed(forged, key)
    # ... and that key cannot open it either: the fingerprint check is a courtesy,
    # the HPKE decryption is what refuses.
    with pytest.raises(SealedExportCorrupt):
        open_sealed(forged, other_key)


def test_header_suite_change_is_refused(key: XWingPrivateKey) -> None:
    data = _seal(key)
    _, header, _ = _parts(data)
    suite = {"aead": "0x0003", "kdf": "0x0001", "kem": "0x647a"}  # ChaCha20-Poly1305
    with pytest.raises(SealedExportCorrupt, match="suite"):
        open_sealed(_with_header(data, {**header, "suite": suite}), key)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h: {k: v for k, v in h.items() if k != "metadata"},
        lambda h: {**h, "version": 1},
        lambda h: {**h, "created_at": "2026-05-01 12:00:00"},
        lambda h: {**h, "created_at": "2026-13-01T12:00:00Z"},
        lambda h: {**h, "recipient": "ABCDEF"},
        lambda h: {**h, "content_type": "application/json; charset=utf-8"},
        lambda h: {**h, "metadata": {"Bad Key": "x"}},
        lambda h: {**h, "metadata": ["x"]},
        lambda h: {**h, "metadata": {"k": "\x1b[31m"}},
    ],
)
def test_malformed_header_is_refused_before_decrypting(
    key: XWingPrivateKey, mutate: object
) -> None:
    data = _seal(key)
    _, header, _ = _parts(data)
    forged = _with_header(data, mutate(header))  # type: ignore[operator]
    with pytest.raises(SealedExportCorrupt):
        read_sealed_header(forged)
    with pytest.raises(SealedExportCorrupt):
        open_sealed(forged, key)


def test_non_canonical_header_is_refused(key: XWingPrivateKey) -> None:
    data = _seal(key)
    magic, header, rest = _parts(data)
    spaced = json.dumps(header, sort_keys=True).encode()
    with pytest.raises(SealedExportCorrupt, match="canonical"):
        open_sealed(magic + spaced + b"\n" + rest, key)
    for bad_line in (b"not json", b"[1,2]", b"[" * 50_000, '{"é":1}'.encode()):
        with pytest.raises(SealedExportCorrupt):
            open_sealed(magic + bad_line + b"\n" + rest, key)


def test_every_single_byte_flip_is_refused(key: XWingPrivateKey) -> None:
    data = _seal(key, b"short result")
    for position in range(len(data)):
        for mask in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[position] ^= mask
            with pytest.raises(SealedExportError):
                open_sealed(bytes(damaged), key)


def test_ciphertext_flips_report_generic_damage(key: XWingPrivateKey) -> None:
    data = _seal(key, b"short result")
    body = data.index(b"\n", len(MAGIC)) + 1
    positions = [
        body,  # first byte of the ML-KEM ciphertext
        body + 1087,  # last byte of the ML-KEM ciphertext
        body + 1088,  # first byte of the X25519 ephemeral key
        body + ENC_BYTES - 1,  # last byte of enc
        body + ENC_BYTES,  # first byte of the AES-GCM ciphertext
        len(data) - 1,  # last byte of the tag
    ]
    details = set()
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        with pytest.raises(SealedExportCorrupt) as caught:
            open_sealed(bytes(damaged), key)
        details.add(caught.value.detail)
    assert len(details) == 1  # the same words whatever was changed


def test_every_truncation_and_extension_is_refused(key: XWingPrivateKey) -> None:
    data = _seal(key, b"short result")
    for length in range(len(data)):
        with pytest.raises(SealedExportError):
            open_sealed(data[:length], key)
    with pytest.raises(SealedExportCorrupt):
        open_sealed(data + b"\x00", key)


def test_wrong_private_key_names_both_fingerprints(
    key: XWingPrivateKey, other_key: XWingPrivateKey
) -> None:
    data = _seal(key)
    with pytest.raises(SealedExportWrongKey) as caught:
        open_sealed(data, other_key)
    error = caught.value
    assert error.code == "sealed_export_wrong_key"
    assert error.status == 422
    assert f"sealed for the key with fingerprint {key.fingerprint}" in error.detail
    assert other_key.fingerprint in error.detail
    assert error.extra == {"sealed_for": key.fingerprint, "key_given": other_key.fingerprint}


def test_wrong_key_with_forged_recipient_still_fails(
    key: XWingPrivateKey, other_key: XWingPrivateKey
) -> None:
    data = _seal(key)
    _, header, _ = _parts(data)
    forged = _with_header(data, {**header, "recipient": other_key.fingerprint})
    with pytest.raises(SealedExportCorrupt):
        open_sealed(forged, other_key)


def test_unsupported_version_and_foreign_files(key: XWingPrivateKey) -> None:
    data = _seal(key)
    future = b"qustody-sealed/2\n" + data[len(MAGIC) :]
    with pytest.raises(SealedExportUnsupportedVersion) as caught:
        open_sealed(future, key)
    assert caught.value.code == "sealed_export_unsupported_version"
    assert caught.value.extra == {"version": 2, "supported": 1}
    assert "format 2" in caught.value.detail
    # "01" is not "1": the magic line is bound into the key schedule too.
    with pytest.raises(SealedExportCorrupt):
        open_sealed(b"qustody-sealed/01\n" + data[len(MAGIC) :], key)
    for foreign in (b"", b"PK\x03\x04zipfile", b"qustody-sealed/one\n{}\n", b"qustody-sealed/"):
        with pytest.raises(SealedExportCorrupt):
            open_sealed(foreign, key)


# --------------------------------------------------------------------------------------
# Limits and input checks
# --------------------------------------------------------------------------------------


def test_size_limits(key: XWingPrivateKey, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sealed.MAX_PLAINTEXT_BYTES == 256 * 1024 * 1024
    monkeypatch.setattr(sealed, "MAX_PLAINTEXT_BYTES", 1000)
    seal(bytes(1000), key.public_key, content_type="application/zip")
    with pytest.raises(SealedExportTooLarge) as caught:
        seal(bytes(1001), key.public_key, content_type="application/zip")
    assert caught.value.code == "sealed_export_too_large"
    assert caught.value.status == 413
    assert caught.value.extra == {"size": 1001, "limit": 1000}
    assert "1001 bytes; at most 1000" in caught.value.detail

    data = _seal(key)
    monkeypatch.setattr(sealed, "MAX_SEALED_BYTES", len(data) - 1)
    with pytest.raises(SealedExportTooLarge):
        open_sealed(data, key)


def test_oversized_header_line_is_refused(key: XWingPrivateKey) -> None:
    data = _seal(key)
    _, _, rest = _parts(data)
    with pytest.raises(SealedExportCorrupt, match="header line"):
        open_sealed(MAGIC + b"x" * (sealed.MAX_HEADER_BYTES + 1) + b"\n" + rest, key)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"content_type": "zip"}, "content_type"),
        ({"content_type": "application/json; charset=utf-8"}, "content_type"),
        ({"metadata": {"Job": "x"}}, "metadata"),
        ({"metadata": {"job": "line\nbreak"}}, "metadata"),
        ({"metadata": {"job": "x" * 1025}}, "metadata"),
        ({"metadata": {"job": 7}}, "metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(65)}}, "metadata"),
    ],
)
def test_seal_refuses_bad_header_input(
    key: XWingPrivateKey, kwargs: dict[str, object], field: str
) -> None:
    arguments: dict[str, object] = {"content_type": "application/json", **kwargs}
    with pytest.raises(InvalidRequest) as caught:
        seal(b"x", key.public_key, **arguments)  # type: ignore[arg-type]
    assert caught.value.field == field


# --------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------


def test_private_key_file_round_trip(tmp_path: Path, key: XWingPrivateKey) -> None:
    path = tmp_path / "keys" / "export.key"
    write_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    document = json.loads(path.read_bytes())
    assert document["format"] == "qustody-xwing-private-key"
    assert document["version"] == 1
    assert document["fingerprint"] == key.fingerprint
    assert base64.urlsafe_b64decode(document["seed"] + "=") == SEED

    loaded = read_private_key(path)
    assert loaded.fingerprint == key.fingerprint
    assert loaded.public_key == key.public_key
    assert open_sealed(_seal(key), loaded)[1] == b"measurement counts"


def test_private_key_file_is_never_overwritten(tmp_path: Path, other_key: XWingPrivateKey) -> None:
    path = tmp_path / "export.key"
    write_private_key(path, XWingPrivateKey.from_seed(SEED))
    before = path.read_bytes()
    with pytest.raises(SealedExportInvalidKey, match="never overwritten"):
        write_private_key(path, other_key)
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_private_key_file_readable_by_others_is_refused(
    tmp_path: Path, key: XWingPrivateKey, mode: int
) -> None:
    path = tmp_path / "export.key"
    write_private_key(path, key)
    path.chmod(mode)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        read_private_key(path)


def test_missing_private_key_file(tmp_path: Path) -> None:
    with pytest.raises(SealedExportInvalidKey, match="no private key file"):
        read_private_key(tmp_path / "absent.key")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: b"not json",
        lambda d: b"\xff\xfe",
        lambda d: b" " * 5000,
        lambda d: json.dumps({**d, "format": "pem"}).encode(),
        lambda d: json.dumps({**d, "version": 2}).encode(),
        lambda d: json.dumps({**d, "kem": "X25519"}).encode(),
        lambda d: json.dumps({**d, "note": "x"}).encode(),
        lambda d: json.dumps({**d, "seed": "!!"}).encode(),
        lambda d: json.dumps({**d, "seed": base64.urlsafe_b64encode(bytes(31)).decode()}).encode(),
        lambda d: json.dumps({**d, "seed": 5}).encode(),
        lambda d: json.dumps({**d, "fingerprint": "0" * 32}).encode(),
        lambda d: json.dumps({**d, "seed": base64.urlsafe_b64encode(bytes(32)).decode()}).encode(),
    ],
)
def test_damaged_private_key_file_is_refused(
    tmp_path: Path, key: XWingPrivateKey, mutate: object
) -> None:
    document = json.loads(key.to_file_bytes())
    path = tmp_path / "export.key"
    path.write_bytes(mutate(document))  # type: ignore[operator]
    path.chmod(0o600)
    with pytest.raises(SealedExportInvalidKey) as caught:
        read_private_key(path)
    assert caught.value.code == "sealed_export_invalid_key"
    assert str(path) in caught.value.detail
    assert document["seed"] not in caught.value.detail


def test_public_key_text_round_trip(key: XWingPrivateKey) -> None:
    text = key.public_key.to_text()
    assert text.startswith(PUBLIC_KEY_PREFIX)
    assert "=" not in text
    assert base64.urlsafe_b64decode(text[len(PUBLIC_KEY_PREFIX) :] + "==") == key.public_key.raw
    assert XWingPublicKey.from_text(text) == key.public_key
    wrapped = "\n  " + "\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + "==\r\n"
    assert XWingPublicKey.from_text(wrapped) == key.public_key
    assert hash(XWingPublicKey.from_text(text)) == hash(key.public_key)


def test_fingerprint_is_sha256_prefix_of_the_public_key(key: XWingPrivateKey) -> None:
    expected = hashlib.sha256(key.public_key.raw).hexdigest()[:32]
    assert key.fingerprint == key.public_key.fingerprint == key_fingerprint(key.public_key.raw)
    assert key.fingerprint == expected


def _mlkem_part(key: XWingPrivateKey) -> bytes:
    return key.public_key.raw[:1184]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("   \n", "is empty"),
        ("ssh-ed25519 AAAAC3Nza", "does not start with 'qustody-xwing-pub:'"),
        ("qustody-xwing-pub:abc+def/", "not base64url"),
        ("qustody-xwing-pub:a", "not base64url"),
        ("qustody-xwing-pub:" + "A" * 100, "decodes to 75 bytes"),
        ("qustody-xwing-pub:" + "A" * 1700, "decodes to 1275 bytes"),
        ("qustody-xwing-pub:" + base64.urlsafe_b64encode(b"\xff" * 1216).decode(), "ML-KEM-768"),
    ],
)
def test_public_key_text_errors_are_clear(text: str, message: str) -> None:
    with pytest.raises(SealedExportInvalidKey) as caught:
        XWingPublicKey.from_text(text)
    assert message in caught.value.detail
    assert caught.value.field == "public_key"
    assert caught.value.code == "sealed_export_invalid_key"
    assert "qustody-xwing-pub:" in caught.value.detail


def test_low_order_x25519_part_is_refused(key: XWingPrivateKey) -> None:
    raw = _mlkem_part(key) + bytes(32)
    with pytest.raises(SealedExportInvalidKey, match="low-order"):
        XWingPublicKey.from_bytes(raw)


def test_pasting_the_private_key_file_is_caught(key: XWingPrivateKey) -> None:
    pasted = key.to_file_bytes().decode()
    with pytest.raises(SealedExportInvalidKey) as caught:
        XWingPublicKey.from_text(pasted)
    assert "private key file" in caught.value.detail
    assert json.loads(pasted)["seed"] not in caught.value.detail


def test_private_key_does_not_print(key: XWingPrivateKey) -> None:
    secrets = {
        SEED.hex(),
        base64.urlsafe_b64encode(SEED).decode().rstrip("="),
        base64.b64encode(SEED).decode().rstrip("="),
        repr(SEED),
    }
    shown = [repr(key), str(key), f"{key}", f"{key!r}", f"{key:>10}", repr([key])]
    for text in shown:
        assert "<redacted>" in text
        assert key.fingerprint in text
        assert not any(secret in text for secret in secrets)
    assert not hasattr(key, "__dict__")
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        copy.copy(key)
    with pytest.raises(TypeError):
        copy.deepcopy(key)


def test_key_generation_is_fresh() -> None:
    first, second = XWingPrivateKey.generate(), XWingPrivateKey.generate()
    assert first.fingerprint != second.fingerprint
    with pytest.raises(ValueError, match="32 bytes"):
        XWingPrivateKey.from_seed(bytes(31))


def test_error_codes_are_stable() -> None:
    assert {
        cls.__name__: (cls.code, cls.status)
        for cls in (
            SealedExportError,
            SealedExportWrongKey,
            SealedExportCorrupt,
            SealedExportUnsupportedVersion,
            SealedExportTooLarge,
            SealedExportInvalidKey,
        )
    } == {
        "SealedExportError": ("sealed_export_error", 422),
        "SealedExportWrongKey": ("sealed_export_wrong_key", 422),
        "SealedExportCorrupt": ("sealed_export_corrupt", 422),
        "SealedExportUnsupportedVersion": ("sealed_export_unsupported_version", 422),
        "SealedExportTooLarge": ("sealed_export_too_large", 413),
        "SealedExportInvalidKey": ("sealed_export_invalid_key", 422),
    }


# --------------------------------------------------------------------------------------
# Independent checks: the output really is HPKE with X-Wing, as documented
# --------------------------------------------------------------------------------------


def _xwing_components(seed: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    """draft-connolly-cfrg-xwing-kem section 5.2, written out again here."""
    expanded = hashlib.shake_256(seed).digest(96)
    return (
        mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[0:64]),
        x25519.X25519PrivateKey.from_private_bytes(expanded[64:96]),
    )


def _xwing_decapsulate(seed: bytes, ct: bytes) -> bytes:
    """X-Wing Decapsulate (draft section 5.5) from its components."""
    mlkem_key, x_key = _xwing_components(seed)
    ct_m, ct_x = ct[:1088], ct[1088:1120]
    ss_m = mlkem_key.decapsulate(ct_m)
    ss_x = x_key.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    pk_x = x_key.public_key().public_bytes_raw()
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + b"\\.//^\\").digest()


def test_key_derivation_and_decapsulation_match_the_xwing_draft_vector() -> None:
    key = XWingPrivateKey.from_seed(XWING_VECTOR_SEED)
    assert key.public_key.raw == XWING_VECTOR_PK
    assert XWingPublicKey.from_bytes(XWING_VECTOR_PK) == key.public_key
    assert _xwing_decapsulate(XWING_VECTOR_SEED, XWING_VECTOR_CT) == XWING_VECTOR_SS


def test_opens_with_the_cryptography_hpke_api_from_the_documented_format(
    key: XWingPrivateKey,
) -> None:
    plaintext = os.urandom(5000)
    data = seal(plaintext, key.public_key, content_type="application/zip", metadata={"a": "b"})
    # Format 1: magic line, header line, then HPKE enc || ct; info = all bytes before enc.
    first = data.index(b"\n")
    second = data.index(b"\n", first + 1)
    assert data[: first + 1] == b"qustody-sealed/1\n"
    info, hpke_output = data[: second + 1], data[second + 1 :]
    assert len(hpke_output) == 1120 + len(plaintext) + 16

    mlkem_key, x_key = _xwing_components(SEED)
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    recipient = hpke.MLKEM768X25519PrivateKey(mlkem_key, x_key)
    assert suite.decrypt(hpke_output, recipient, info=info) == plaintext


def test_rfc9180_key_schedule_by_hand(key: XWingPrivateKey) -> None:
    """Base mode, single shot (RFC 9180 sections 5.1 and 6.1), suite 0x647a/0x0001/0x0002."""
    plaintext = b"the answer is 42"
    data = _seal(key, plaintext)
    body = data.index(b"\n", len(MAGIC)) + 1
    info, enc, ciphertext = data[:body], data[body : body + 1120], data[body + 1120 :]

    suite_id = b"HPKE" + struct.pack(">HHH", 0x647A, 0x0001, 0x0002)

    def labeled_extract(salt: bytes, label: bytes, ikm: bytes) -> bytes:
        return hmac.new(salt, b"HPKE-v1" + suite_id + label + ikm, hashlib.sha256).digest()

    def labeled_expand(prk: bytes, label: bytes, context: bytes, length: int) -> bytes:
        labeled = struct.pack(">H", length) + b"HPKE-v1" + suite_id + label + context
        return HKDFExpand(hashes.SHA256(), length, labeled).derive(prk)

    shared_secret = _xwing_decapsulate(SEED, enc)
    context = (
        b"\x00"  # mode_base
        + labeled_extract(b"", b"psk_id_hash", b"")
        + labeled_extract(b"", b"info_hash", info)
    )
    secret = labeled_extract(shared_secret, b"secret", b"")
    aead_key = labeled_expand(secret, b"key", context, 32)
    base_nonce = labeled_expand(secret, b"base_nonce", context, 12)
    # Sequence number 0: the nonce is base_nonce itself; aad is empty.
    assert AESGCM(aead_key).decrypt(base_nonce, ciphertext, b"") == plaintext
