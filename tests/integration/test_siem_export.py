"""Audit events reach a SIEM as octet-framed RFC 5424 syslog carrying OCSF JSON,
over real TCP and TLS connections to listeners on loopback.

The listeners here are small syslog receivers: they read octet-counted frames
(RFC 6587 §3.4.1), and this file parses each message's RFC 5424 header and
structured data itself. The TLS listener's certificate comes from a test CA
made with ``cryptography``; a sender that does not trust that CA, or asks for
another name, is refused.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from qustody.audit import siem as siem_module
from qustody.audit.ocsf import to_ocsf
from qustody.audit.recorder import Actor, Target, event_row, record_rows
from qustody.audit.siem import (
    SD_ID,
    SiemCertificateRejected,
    SiemUnreachable,
    SyslogSender,
    frame,
    sd_escape,
    syslog_message,
)
from qustody.domain.errors import ConfigurationError
from qustody.domain.models import Decision, RequestContext
from qustody.domain.vocabulary import Action
from qustody.storage import models as m
from qustody.storage.db import Database

VERSION = "0.1.0"
HOST = "gw-test.example"
AT = datetime(2026, 11, 21, 22, 37, 29, 123456, tzinfo=UTC)
WAIT = 5.0
REASON = "backend=aer shots=1024 marker-7f3a"  # must never reach a log line


def _event(seq: int, tenant_id: str | None = "ten_a", **changes: object) -> dict[str, object]:
    row = event_row(
        Action.JOB_SUBMIT,
        actor=Actor("prn_1", tenant_id, "qustody-token", "jti-1"),
        target=Target("job", f"job_{seq}", tenant_id),
        decision=Decision(True, Action.JOB_SUBMIT, ("tenant-developer",)),
        request=RequestContext(f"req_{seq}", "203.0.113.9", "qustody-cli/0.1"),
        job_id=f"job_{seq}",
        payload_sha256="ab" * 32,
        reason=REASON,
        at=AT + timedelta(seconds=seq),
    )
    return {"auth_strength": None, "approval_id": None, **row, "seq": seq, **changes}


# -- a syslog receiver ----------------------------------------------------------------


class Listener:
    """Accepts connections on loopback one after another and reads octet-counted frames.

    ``drop_after``: close each connection after that many frames (``reset``: with
    a TCP reset rather than an orderly close).
    """

    def __init__(
        self,
        context: ssl.SSLContext | None = None,
        *,
        drop_after: int | None = None,
        reset: bool = False,
    ) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port: int = self.server.getsockname()[1]
        self.frames: list[bytes] = []
        self.connections = 0
        self.failures: list[str] = []
        self.dropped = threading.Event()
        self._context = context
        self._drop_after = drop_after
        self._reset = reset
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self.server.close()
        assert not self._thread.is_alive()

    def wait_for(self, count: int) -> list[bytes]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.frames) >= count, WAIT), (
                f"received {len(self.frames)} of {count} frames"
            )
            return list(self.frames)

    def wait_for_failure(self) -> str:
        with self._changed:
            assert self._changed.wait_for(lambda: self.failures, WAIT), "no failure seen"
            return self.failures[0]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            with self._changed:
                self.connections += 1
            try:
                self._receive(conn)
            except OSError as exc:  # a refused TLS handshake, a broken connection
                with self._changed:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    self._changed.notify_all()
            finally:
                conn.close()

    def _receive(self, conn: socket.socket) -> None:
        if self._context is None:
            self._read(conn)
            return
        conn.settimeout(WAIT)
        with self._context.wrap_socket(conn, server_side=True) as tls:
            self._read(tls)

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        buffer = b""
        here = 0
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            buffer += data
            while (parsed := _split_frame(buffer)) is not None:
                message, buffer = parsed
                here += 1
                with self._changed:
                    self.frames.append(message)
                    self._changed.notify_all()
                if self._drop_after is not None and here >= self._drop_after:
                    if self._reset:  # SO_LINGER 0: close() sends a reset
                        linger = struct.pack("ii", 1, 0)
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    conn.close()
                    self.dropped.set()
                    return


_MSG_LEN = re.compile(rb"([1-9][0-9]*) ")


def _split_frame(buffer: bytes) -> tuple[bytes, bytes] | None:
    """One octet-counted frame off the front of ``buffer`` (RFC 6587 §3.4.1), if whole."""
    if not buffer:
        return None
    match = _MSG_LEN.match(buffer)
    if match is None:
        assert buffer[:1].isdigit(), f"not a frame: {buffer[:20]!r}"
        assert len(buffer) < 12, f"not a frame: {buffer[:20]!r}"
        return None
    start, length = match.end(), int(match.group(1))
    if len(buffer) < start + length:
        return None
    return buffer[start : start + length], buffer[start + length :]


# -- an RFC 5424 parser ---------------------------------------------------------------


@dataclass
class Syslog:
    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd_id: str
    params: dict[str, str]
    msg: bytes


_HEADER = re.compile(rb"<([0-9]{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ")
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)")
_SD_NAME = re.compile(r"[!#-<>-Z^-~]{1,32}")  # PRINTUSASCII except = SP ] "


def parse_syslog(message: bytes) -> Syslog:
    """The header, one SD-ELEMENT (unescaped) and MSG of an RFC 5424 message."""
    header = _HEADER.match(message)
    assert header is not None, message[:80]
    fields = [g.decode("ascii") for g in header.groups()]
    pri, timestamp, hostname, app_name, procid, msgid = fields
    for value, limit in ((hostname, 255), (app_name, 48), (procid, 128), (msgid, 32)):
        assert 1 <= len(value) <= limit
    assert _RFC3339.fullmatch(timestamp), timestamp
    text = message[header.end() :].decode("utf-8")
    assert text.startswith("["), text[:40]
    sd_id, _, rest = text[1:].partition(" ")
    assert _SD_NAME.fullmatch(sd_id.split("@")[0])
    params: dict[str, str] = {}
    i = 0
    while rest[i] != "]":
        name, _, after = rest[i:].partition('="')
        assert _SD_NAME.fullmatch(name), name
        value, j = [], 0
        while after[j] != '"':
            if after[j] == "\\" and after[j + 1] in '"\\]':
                j += 1
            else:
                assert after[j] != "]", "an unescaped ] in a PARAM-VALUE"
            value.append(after[j])
            j += 1
        params[name] = "".join(value)
        i += len(name) + 2 + j + 1
        if rest[i] == " ":
            i += 1
    assert rest[i + 1] == " ", "MSG follows the structured data after one space"
    msg = rest[i + 2 :].encode("utf-8")
    return Syslog(int(pri), timestamp, hostname, app_name, procid, msgid, sd_id, params, msg)


# -- TLS material ---------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that did not issue the listener's certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a server signs its TLS handshakes."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca = _ca("Qustody test SIEM CA")
    key, cert = _server_cert(ca_key, ca)
    _, other = _ca("Someone else's CA")
    paths = Pki(folder / "ca.pem", folder / "cert.pem", folder / "key.pem", folder / "other.pem")
    paths.ca.write_bytes(_pem(ca))
    paths.cert.write_bytes(_pem(cert))
    paths.other_ca.write_bytes(_pem(other))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def _server_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(pki.cert, pki.key)
    return context


def _sender(port: int, **options: object) -> SyslogSender:
    return SyslogSender(
        "127.0.0.1",
        port,
        product_version=VERSION,
        hostname=HOST,
        timeout=WAIT,
        **options,
    )


@pytest.fixture
def tcp() -> Iterator[Listener]:
    with Listener() as listener:
        yield listener


# -- the messages ---------------------------------------------------------------------


def test_messages_over_tcp(tcp: Listener) -> None:
    events = [
        _event(1),
        _event(2, tenant_id='te"n]\\x', outcome="denied", decision="deny"),
        _event(3, tenant_id=None, event_type="job:start"),
    ]
    with _sender(tcp.port) as siem:
        assert siem.send(events) == 3
    received = [parse_syslog(m) for m in tcp.wait_for(3)]
    assert tcp.connections == 1
    for event, message in zip(events, received, strict=True):
        ocsf_event = to_ocsf(event, product_version=VERSION)
        severity = {1: 6, 3: 4}[ocsf_event["severity_id"]]
        assert message.pri == 13 * 8 + severity
        assert datetime.fromisoformat(message.timestamp) == event["at"]
        assert (message.hostname, message.app_name, message.procid) == (HOST, "qustody", "-")
        assert message.msgid == event["event_type"]
        assert message.sd_id == SD_ID
        expected = {"seq": str(event["seq"])}
        if event["tenant_id"] is not None:
            expected["tenant"] = str(event["tenant_id"])
        assert message.params == expected
        assert message.msg.isascii()
        assert json.loads(message.msg) == ocsf_event
    assert received[1].params["tenant"] == 'te"n]\\x'  # escaped on the wire, whole here


def test_one_tenants_events_only(tcp: Listener) -> None:
    events = [_event(1), _event(2, "ten_b"), _event(3, None), _event(4), _event(5, "ten_b")]
    with _sender(tcp.port, tenant_id="ten_a") as siem:
        assert siem.send(events) == 2
        assert siem.send([_event(6, "ten_b")]) == 0
    with _sender(tcp.port) as platform:
        assert platform.send([_event(7, "ten_b"), _event(8, None)]) == 2
    received = [parse_syslog(m) for m in tcp.wait_for(4)]
    assert [m.params["seq"] for m in received] == ["1", "4", "7", "8"]
    assert [json.loads(m.msg)["metadata"].get("tenant_uid") for m in received] == [
        "ten_a",
        "ten_a",
        "ten_b",
        None,
    ]


@pytest.mark.parametrize(
    ("tls", "reset"),
    [(False, False), (False, True), (True, False)],
    ids=["tcp-close", "tcp-reset", "tls-close"],
)
def test_reconnects_after_the_siem_drops_the_connection(
    tls: bool, reset: bool, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="qustody.audit.siem")
    server = _server_context(pki) if tls else None
    client = {"tls": ssl.create_default_context(cafile=pki.ca)} if tls else {}
    with (
        Listener(server, drop_after=2, reset=reset) as listener,
        _sender(listener.port, **client) as siem,
    ):
        assert siem.send([_event(1), _event(2)]) == 2
        listener.wait_for(2)
        assert listener.dropped.wait(WAIT)
        assert siem.send([_event(3), _event(4)]) == 2
        received = [parse_syslog(m) for m in listener.wait_for(4)]
        assert listener.connections == 2
    assert [m.params["seq"] for m in received] == ["1", "2", "3", "4"]
    assert "reconnecting" in caplog.text
    assert REASON not in caplog.text
    assert "job_" not in caplog.text


def test_sends_again_when_a_write_fails(
    tcp: Listener, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="qustody.audit.siem")
    with _sender(tcp.port) as siem:
        assert siem.send([_event(1)]) == 1
        tcp.wait_for(1)
        # The connection breaks after the sender's check that it is open (a race
        # the check cannot close): the write fails (EPIPE) and the chunk goes out
        # again on a new connection.
        monkeypatch.setattr(siem_module, "_peer_closed", lambda sock: False)
        siem._sock.shutdown(socket.SHUT_WR)
        assert siem.send([_event(2)]) == 1
    assert [parse_syslog(m).params["seq"] for m in tcp.wait_for(2)] == ["1", "2"]
    assert tcp.connections == 2
    assert "broke" in caplog.text
    assert REASON not in caplog.text


def test_an_unreachable_siem_is_a_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    # Nothing listens on the port now.
    siem = _sender(port)
    with pytest.raises(SiemUnreachable, match=rf"127\.0\.0\.1:{port} is unreachable") as raised:
        siem.send([_event(1)])
    assert raised.value.code == "siem_unreachable"
    assert REASON not in raised.value.detail
    with pytest.raises(SiemUnreachable):
        siem.connect()
    assert not siem.connected


def test_stored_events_reach_the_siem(db: Database, tcp: Listener) -> None:
    """Rows as SQLite or PostgreSQL return them (naive or aware times) map and travel."""
    written = [{k: v for k, v in _event(seq).items() if k != "seq"} for seq in (1, 2, 3)]
    written[1]["tenant_id"] = "ten_b"
    with db.writing() as connection:
        record_rows(connection, written)
    with db.reading() as connection:
        rows = [
            r._mapping
            for r in connection.execute(select(m.AUDIT_EVENTS).order_by(m.AUDIT_EVENTS.c.seq))
        ]
    with _sender(tcp.port, tenant_id="ten_a") as siem:
        assert siem.send(rows) == 2
    received = [parse_syslog(message) for message in tcp.wait_for(2)]
    assert [m.params["seq"] for m in received] == ["1", "3"]
    for row, message in zip([rows[0], rows[2]], received, strict=True):
        assert json.loads(message.msg) == to_ocsf(row, product_version=VERSION)
        assert datetime.fromisoformat(message.timestamp) == AT + timedelta(seconds=row["seq"])


# -- TLS ------------------------------------------------------------------------------


def test_messages_over_tls(pki: Pki) -> None:
    client = ssl.create_default_context(cafile=pki.ca)
    with Listener(_server_context(pki)) as listener:
        with _sender(listener.port, tls=client, server_name="localhost") as siem:
            assert siem.send([_event(1), _event(2)]) == 2
        received = [parse_syslog(m) for m in listener.wait_for(2)]
        # An IP address the certificate names works too.
        with _sender(listener.port, tls=client) as by_address:
            assert by_address.send([_event(3)]) == 1
        listener.wait_for(3)
    assert [m.params["seq"] for m in received] == ["1", "2"]
    assert json.loads(received[0].msg) == to_ocsf(_event(1), product_version=VERSION)
    assert listener.failures == []


@pytest.mark.parametrize(
    "trust",
    ["another CA", "the system's CAs (tls=True)", "another name"],
)
def test_tls_refuses_a_certificate_it_does_not_trust(pki: Pki, trust: str) -> None:
    options: dict[str, object] = {
        "another CA": {"tls": ssl.create_default_context(cafile=pki.other_ca)},
        "the system's CAs (tls=True)": {"tls": True, "server_name": "localhost"},
        "another name": {
            "tls": ssl.create_default_context(cafile=pki.ca),
            "server_name": "siem.example",
        },
    }[trust]
    with Listener(_server_context(pki)) as listener:
        siem = _sender(listener.port, **options)
        with pytest.raises(SiemCertificateRejected, match="does not verify") as raised:
            siem.send([_event(1)])
        assert raised.value.code == "siem_certificate_rejected"
        assert isinstance(raised.value, SiemUnreachable)
        listener.wait_for_failure()
        assert listener.frames == []
        assert not siem.connected


def test_a_context_that_verifies_nothing_is_refused() -> None:
    lax = ssl.create_default_context()
    lax.check_hostname = False
    lax.verify_mode = ssl.CERT_NONE
    with pytest.raises(ConfigurationError, match="does not verify"):
        _sender(6514, tls=lax)


# -- the format, without a connection -------------------------------------------------


def test_structured_data_escaping() -> None:
    assert sd_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    assert sd_escape("ten_1") == "ten_1"


def test_header_fields_stay_printable_and_short() -> None:
    event = _event(1, event_type="job:" + "x" * 40 + " \u00e9")
    message = parse_syslog(syslog_message(event, product_version=VERSION, hostname=HOST))
    assert message.msgid == ("job:" + "x" * 40)[:32]
    local = syslog_message(_event(2), product_version=VERSION, hostname=HOST, facility=16)
    assert parse_syslog(local).pri == 16 * 8 + 6
    assert frame(b"<110>1 -") == b"8 <110>1 -"


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"facility": 24}, "facility 24"),
        ({"hostname": "gw 1"}, "hostname"),
        ({"hostname": ""}, "hostname"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_configuration_is_refused(options: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        SyslogSender("127.0.0.1", 6514, product_version=VERSION, **options)
    with pytest.raises(ConfigurationError, match="port 0"):
        SyslogSender("127.0.0.1", 0, product_version=VERSION)
