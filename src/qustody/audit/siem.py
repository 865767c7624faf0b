"""Audit events to a SIEM: RFC 5424 syslog messages carrying OCSF, over TCP or TLS.

Each audit event becomes one syslog message (RFC 5424 §6), one line on the wire::

    <110>1 2026-11-21T22:37:29.123456Z gw1 qustody - job:submit
        [qustody@32473 seq="7" tenant="ten_1"] {"class_uid":3004,...}

- PRI: the facility (default 13, "log audit") times 8 plus a severity from the
  OCSF event's ``severity_id`` (Informational 6, Low 5, Medium 4, ...);
- TIMESTAMP: the event's time, RFC 3339 in UTC to the microsecond;
- HOSTNAME: this gateway (configurable); APP-NAME ``qustody``; PROCID ``-``;
- MSGID: the event type (``job:submit``: ``:`` is printable US-ASCII), with any
  other character replaced by ``_`` and cut to 32 octets;
- STRUCTURED-DATA: ``[qustody@32473 seq=".." tenant=".."]``, with ``"``,
  ``\\`` and ``]`` escaped (§6.3.3); 32473 is the example enterprise number of
  RFC 5612, which RFC 5424's own examples use;
- MSG: the OCSF event (:func:`qustody.audit.ocsf.to_ocsf`) as compact JSON in
  ASCII, so it needs no BOM (§6.4).

Messages travel framed by octet counting, ``LENGTH SP MESSAGE`` (RFC 6587
§3.4.1; RFC 5425 §4.3 for TLS), over a TCP or TLS connection that
:class:`SyslogSender` keeps open between batches. Before each chunk it checks
that the SIEM has not closed the connection, and a chunk whose write fails is
sent again on a new connection; a SIEM drops any repeat by ``metadata.uid``
(the event's gap-free ``seq``). Syslog carries no acknowledgement, so what the
operating system had accepted when a SIEM died can be lost: an export that
must be complete resumes from the last ``seq`` the SIEM holds.
Nothing here logs an event's content: logs and errors name the SIEM's address
and the kind of failure only.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Final

from qustody.audit.events import utc_text
from qustody.audit.ocsf import dumps, event_seq, event_time, for_tenant, to_ocsf
from qustody.domain.errors import ConfigurationError, ServiceUnavailable

log = logging.getLogger(__name__)

#: RFC 5424 facility 13, "log audit".
FACILITY_LOG_AUDIT: Final = 13
APP_NAME: Final = "qustody"
SD_ID: Final = "qustody@32473"
MSGID_MAX: Final = 32
HOSTNAME_MAX: Final = 255
#: Frames are written in chunks of about this many octets.
CHUNK_OCTETS: Final = 64 * 1024

#: OCSF severity_id to syslog severity (RFC 5424 §6.2.1).
_SYSLOG_SEVERITY: Final[Mapping[int, int]] = {
    0: 5,  # Unknown: notice
    1: 6,  # Informational: informational
    2: 5,  # Low: notice
    3: 4,  # Medium: warning
    4: 3,  # High: error
    5: 2,  # Critical: critical
    6: 1,  # Fatal: alert
    99: 5,  # Other: notice
}


class SiemUnreachable(ServiceUnavailable):
    """The SIEM did not accept a connection, or the connection broke and could not be made again."""

    code = "siem_unreachable"
    title = "SIEM unreachable"


class SiemCertificateRejected(SiemUnreachable):
    """The SIEM's TLS certificate did not verify against the trust the sender was given."""

    code = "siem_certificate_rejected"
    title = "SIEM certificate rejected"


def _printable(value: str, limit: int) -> str:
    """``value`` as an RFC 5424 header field: PRINTUSASCII, at most ``limit`` octets, or ``-``."""
    return "".join(c if "!" <= c <= "~" else "_" for c in value)[:limit] or "-"


def sd_escape(value: str) -> str:
    """A PARAM-VALUE with ``"``, ``\\`` and ``]`` escaped (RFC 5424 §6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_message(
    event: Mapping[str, object],
    *,
    product_version: str,
    hostname: str,
    facility: int = FACILITY_LOG_AUDIT,
) -> bytes:
    """One audit event as an RFC 5424 message whose MSG is its OCSF event."""
    ocsf_event = to_ocsf(event, product_version=product_version)
    severity_id = ocsf_event.get("severity_id")
    severity = _SYSLOG_SEVERITY.get(severity_id, 5) if isinstance(severity_id, int) else 5
    params = [f'seq="{event_seq(event)}"']
    tenant_id = event.get("tenant_id")
    if isinstance(tenant_id, str):
        params.append(f'tenant="{sd_escape(tenant_id)}"')
    msgid = _printable(str(event.get("event_type", "")), MSGID_MAX)
    header = (
        f"<{facility * 8 + severity}>1 {utc_text(event_time(event))} "
        f"{_printable(hostname, HOSTNAME_MAX)} {APP_NAME} - {msgid} [{SD_ID} {' '.join(params)}] "
    )
    return header.encode("utf-8") + dumps(ocsf_event).encode("ascii")


def frame(message: bytes) -> bytes:
    """Octet-counted framing: ``MSG-LEN SP SYSLOG-MSG`` (RFC 6587 §3.4.1, RFC 5425 §4.3)."""
    return b"%d %s" % (len(message), message)


def syslog_frames(
    events: Iterable[Mapping[str, object]],
    *,
    product_version: str,
    hostname: str,
    facility: int = FACILITY_LOG_AUDIT,
    tenant_id: str | None = None,
) -> Iterator[bytes]:
    """The framed messages of ``events``; only ``tenant_id``'s events when given."""
    for event in for_tenant(events, tenant_id):
        yield frame(
            syslog_message(
                event, product_version=product_version, hostname=hostname, facility=facility
            )
        )


def _chunks(frames: Iterable[bytes], octets: int) -> Iterator[tuple[bytes, int]]:
    """Frames joined into chunks of about ``octets``, each with how many frames it holds."""
    buffer = bytearray()
    count = 0
    for item in frames:
        buffer += item
        count += 1
        if len(buffer) >= octets:
            yield bytes(buffer), count
            buffer.clear()
            count = 0
    if count:
        yield bytes(buffer), count


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the SIEM has closed or reset the connection, by a read that does not wait.

    A syslog receiver never sends: a read finds nothing (open), the end of the
    stream or a reset (gone), or TLS housekeeping such as a TLS 1.3 session
    ticket, which the read consumes and then finds nothing.
    """
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        for _ in range(8):
            try:
                if not sock.recv(4096):
                    return True
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return False
        return False  # it keeps sending: not a syslog receiver's habit, but open
    except (OSError, ValueError):
        return True
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


class SyslogSender:
    """Sends audit events to a SIEM as octet-framed RFC 5424 syslog over TCP or TLS.

    ``tls`` is False for plain TCP, True for TLS that verifies the SIEM's
    certificate against the system's trust store and its name against
    ``server_name`` (default ``host``), or an :class:`ssl.SSLContext` to use
    (one that does not verify certificates is refused). With ``tenant_id``
    only that tenant's events are sent (by the event's ``tenant_id``);
    without it, every event (platform-wide).

        with SyslogSender("siem.example", 6514, tls=context, product_version=v) as siem:
            siem.send(events)
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        product_version: str,
        tls: bool | ssl.SSLContext = False,
        server_name: str | None = None,
        tenant_id: str | None = None,
        facility: int = FACILITY_LOG_AUDIT,
        hostname: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not 0 < port < 65536:
            raise ConfigurationError(f"SIEM port {port} is out of range; use 1 to 65535")
        if not 0 <= facility <= 23:
            raise ConfigurationError(
                f"syslog facility {facility} is out of range; use 0 to 23 (13 is 'log audit')"
            )
        if timeout <= 0:
            raise ConfigurationError(f"SIEM timeout {timeout} must be positive (seconds)")
        if isinstance(tls, ssl.SSLContext) and tls.verify_mode == ssl.CERT_NONE:
            raise ConfigurationError(
                "the TLS context does not verify the SIEM's certificate; load the SIEM's CA "
                "with context.load_verify_locations() and keep verify_mode CERT_REQUIRED"
            )
        if hostname is not None and _printable(hostname, HOSTNAME_MAX) != hostname:
            raise ConfigurationError(
                f"syslog hostname {hostname!r} must be 1 to {HOSTNAME_MAX} printable "
                "US-ASCII characters without spaces (RFC 5424 §6.2.4)"
            )
        self.host = host
        self.port = port
        self.tenant_id = tenant_id
        self._product_version = product_version
        self._context = ssl.create_default_context() if tls is True else tls or None
        self._server_name = server_name or host
        self._facility = facility
        self._hostname = hostname or _printable(socket.gethostname(), HOSTNAME_MAX)
        self._timeout = timeout
        self._sock: socket.socket | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        """Open the connection (and the TLS session) unless one is open."""
        self._open()

    def _open(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self._timeout)
        except OSError as exc:
            raise SiemUnreachable(
                f"the SIEM at {self.address} is unreachable ({type(exc).__name__}); check its "
                "address and port, and that it accepts syslog over TCP"
                + (" with TLS" if self._context else "")
            ) from exc
        if self._context is None:
            self._sock = raw
            return raw
        try:
            self._sock = self._context.wrap_socket(raw, server_hostname=self._server_name)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise SiemCertificateRejected(
                f"the SIEM at {self.address} presented a certificate that does not verify "
                f"({exc.verify_message}); give the sender an SSLContext that trusts the "
                "SIEM's CA, and a server_name its certificate names"
            ) from exc
        except OSError as exc:
            raw.close()
            raise SiemUnreachable(
                f"the TLS handshake with the SIEM at {self.address} failed "
                f"({type(exc).__name__}); check that it speaks syslog over TLS on this port"
            ) from exc
        return self._sock

    def send(self, events: Iterable[Mapping[str, object]]) -> int:
        """Send ``events`` (this sender's tenant's only, if it has one); returns how many.

        Reconnects once when the connection turns out broken, and sends the
        interrupted chunk again; raises :class:`SiemUnreachable` when that fails.
        """
        frames = syslog_frames(
            events,
            product_version=self._product_version,
            hostname=self._hostname,
            facility=self._facility,
            tenant_id=self.tenant_id,
        )
        sent = 0
        for chunk, count in _chunks(frames, CHUNK_OCTETS):
            if self._sock is not None and _peer_closed(self._sock):
                log.info("the SIEM at %s closed the connection; reconnecting", self.address)
                self._drop()
            self._deliver(chunk)
            sent += count
        return sent

    def _deliver(self, chunk: bytes) -> None:
        try:
            self._open().sendall(chunk)
            return
        except OSError as exc:
            log.warning(
                "the connection to the SIEM at %s broke (%s); reconnecting",
                self.address,
                type(exc).__name__,
            )
            self._drop()
        try:
            self._open().sendall(chunk)
        except OSError as exc:
            self._drop()
            raise SiemUnreachable(
                f"the connection to the SIEM at {self.address} broke twice in a row "
                f"({type(exc).__name__}); check the SIEM's health and retry the export"
            ) from exc

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        """Close the connection, ending a TLS session with close_notify (RFC 5425 §4.4)."""
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket):
            with contextlib.suppress(OSError, ValueError):
                sock.settimeout(1.0)
                sock.unwrap()
        self._drop()

    def __enter__(self) -> SyslogSender:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
