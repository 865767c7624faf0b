"""An OIDC issuer on loopback: a discovery document and a JWKS over real HTTP.

It stands in for issuers that lie outside this machine (a CI platform's, an
identity provider's). The test holds the keys the JWKS publishes and can
change them, and sees how often the JWKS was fetched.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc.jwk import ECKey, OKPKey, RSAKey

PublicKey = RSAKey | ECKey | OKPKey


class LoopbackIssuer:
    def __init__(
        self, keys: list[PublicKey] | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        #: The keys the JWKS publishes (public halves); change them at will.
        self.keys: list[PublicKey] = list(keys or [])
        self.jwks_fetches = 0
        #: The ``issuer`` the discovery document claims (default: the real URL).
        self.metadata_issuer: str | None = None
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body: dict[str, Any] = {
                        "issuer": issuer.metadata_issuer or issuer.url,
                        "jwks_uri": issuer.url + "/jwks",
                        **(metadata or {}),
                    }
                elif self.path == "/jwks":
                    issuer.jwks_fetches += 1
                    body = {"keys": [k.as_dict(private=False) for k in issuer.keys]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
