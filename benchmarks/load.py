"""A lean HTTP/1.1 load generator for the throughput benchmark.

The gateway and the load generator share two cores, so every millisecond the
generator spends is a millisecond the gateway does not get. A general HTTP
client (httpx) costs about 0.5 ms of CPU per request in Python; this one
sends one pre-built request over keep-alive connections and reads only the
status line and ``Content-Length``, for a few tens of microseconds a request.
It speaks just enough HTTP/1.1 for the gateway's answers (no chunked bodies).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    ok: int = 0
    refused: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)


def build_post(url: str, path: str, token: str, body: dict[str, object]) -> bytes:
    """One complete ``POST`` request, ready to be written again and again."""
    host = urlsplit(url).netloc
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\n"
        "User-Agent: qustody-bench\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "\r\n"
    )
    return head.encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
            break
    if length:
        await reader.readexactly(length)
    return status


async def _connection(
    host: str, port: int, request: bytes, stop_at: float, result: LoadResult, expect: int
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == expect:
                result.ok += 1
            else:
                result.refused += 1
    finally:
        writer.close()
        await writer.wait_closed()


def hammer(
    url: str, request: bytes, *, clients: int, seconds: float, expect: int = 202
) -> LoadResult:
    """Send ``request`` on ``clients`` keep-alive connections for ``seconds``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    result = LoadResult()

    async def main() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(
            *(_connection(host, port, request, stop_at, result, expect) for _ in range(clients))
        )

    asyncio.run(main())
    return result
