"""A synchronous HTTP client for the Qustody REST API (``docs/api.md``).

The client speaks HTTP only. It keeps the bearer token inside the underlying
:class:`httpx.Client` headers and nowhere else, so no ``repr``, ``str`` or error message
of the SDK can show it.
"""

# Qiskit ships no type information (it is only named in annotations here).
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, Self, TypeVar
from urllib.parse import quote

import httpx

from qustody import __version__
from qustody.client._http import api_error_from_answer
from qustody.client.accounts import AccountMethods
from qustody.client.approvals import ApprovalMethods
from qustody.client.dpop import DpopAuth, DpopKey
from qustody.client.errors import (
    QustodyAPIError,
    QustodyConnectionError,
    QustodyProtocolError,
    QustodyTimeoutError,
)
from qustody.client.identity import IdentityMethods
from qustody.client.models import (
    Backend,
    Health,
    IssuedToken,
    Job,
    JobPage,
    JobState,
    Member,
    Project,
    Readiness,
    Result,
    Tenant,
    TenantCreated,
    items_of,
)
from qustody.client.policies import PolicyDiff, PolicyVersion
from qustody.client.scheduling import SchedulingMethods
from qustody.client.usage import UsageMethods
from qustody.client.webhooks import WebhookMethods

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

DEFAULT_TIMEOUT = 30.0
DEFAULT_POLL_INTERVAL = 0.1


class _FromJson(Protocol):
    @classmethod
    def from_json(cls, data: object) -> Self: ...


_Listed = TypeVar("_Listed", bound=_FromJson)
#: Seconds the gateway may hold a waiting request (its limit is 30).
MAX_SERVER_WAIT = 20.0


def _segment(value: str) -> str:
    """One URL path segment; an identifier can never climb out of its route."""
    if not value:
        raise ValueError("an identifier in a URL path must not be empty")
    return quote(value, safe="")


class Client(
    IdentityMethods,
    AccountMethods,
    WebhookMethods,
    SchedulingMethods,
    ApprovalMethods,
    UsageMethods,
):
    """Talks to one Qustody gateway as one principal.

    ``url`` is the gateway's base URL (with or without a trailing ``/v1``); ``token`` is
    a Qustody-issued bearer token, or ``None`` for the unauthenticated health checks.
    With ``dpop_key`` (a :class:`~qustody.client.dpop.DpopKey`), ``token`` is a DPoP-bound
    token and every request carries a fresh proof of the key (RFC 9449).
    ``transport`` lets a caller supply its own :class:`httpx.BaseTransport`.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        dpop_key: DpopKey | None = None,
    ) -> None:
        base = url.strip().rstrip("/")
        base = base.removesuffix("/v1")
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        headers = {"Accept": "application/json", "User-Agent": f"qustody-sdk/{__version__}"}
        if token is not None:
            token = token.strip()
            if not token or any(c.isspace() for c in token):
                raise ValueError("token must be a non-empty string without whitespace")
            if dpop_key is None:
                headers["Authorization"] = f"Bearer {token}"
        # With a DPoP key (RFC 9449), each request gets a fresh proof of it.
        auth = DpopAuth(token, dpop_key) if dpop_key is not None else None
        self._url = base
        self._http = httpx.Client(
            base_url=f"{base}/v1",
            headers=headers,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            auth=auth,
        )

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"Client(url={self._url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --------------------------------------------------------------------- HTTP

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str | int] | None = None,
        extra_timeout: float = 0.0,
    ) -> httpx.Response:
        timeout = self._http.timeout
        if extra_timeout:
            timeout = httpx.Timeout(
                connect=timeout.connect,
                read=None if timeout.read is None else timeout.read + extra_timeout,
                write=timeout.write,
                pool=timeout.pool,
            )
        try:
            response = self._http.request(method, path, json=json, params=params, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise QustodyConnectionError(
                f"{method} {self._url}/v1{path} timed out ({type(exc).__name__}); "
                "check the gateway, or raise the client timeout"
            ) from None
        except httpx.TransportError as exc:
            raise QustodyConnectionError(
                f"cannot reach the gateway at {self._url}: {type(exc).__name__}: {exc}"
            ) from None
        if response.is_success:
            return response
        raise _error_of(response)

    def _json(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str | int] | None = None,
        extra_timeout: float = 0.0,
    ) -> object:
        response = self._request(
            method, path, json=json, params=params, extra_timeout=extra_timeout
        )
        try:
            document: object = response.json()
        except ValueError:
            raise QustodyProtocolError(
                f"{method} /v1{path} answered HTTP {response.status_code} without a JSON body"
            ) from None
        return document

    def _list(
        self, model: type[_Listed], path: str, params: dict[str, str | int] | None = None
    ) -> list[_Listed]:
        """The ``items`` of a ``GET`` listing, each parsed as ``model``."""
        what = f"{path.strip('/')} list"
        return [
            model.from_json(item.raw_object())
            for item in items_of(self._json("GET", path, params=params), what)
        ]

    # --------------------------------------------------------------------- jobs

    def submit(
        self,
        circuit: str | QuantumCircuit,
        *,
        backend: str,
        shots: int = 1024,
        project: str,
        memory: bool = False,
        seed: int | None = None,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        priority: int = 0,
        session: str | None = None,
        reason: str | None = None,
        ticket: str | None = None,
    ) -> Job:
        """Submit one circuit; returns the accepted job (usually ``queued``).

        ``priority`` (0-9) orders your tenant's own queued jobs; ``session``
        (a ``ses_`` id, :meth:`open_session`) joins one of your sessions.

        ``reason`` and ``ticket``: for a job a policy holds for approval; with
        them it waits in ``awaiting_approval`` for its approvers (without, it
        is refused with ``approval_required``).

        ``name`` and ``labels`` are for people and scripts; the gateway stores
        them encrypted, like the circuit.

        ``circuit`` is OpenQASM 2/3 text or a bound :class:`qiskit.QuantumCircuit`
        (exported as OpenQASM 2 when possible, else OpenQASM 3). A refusal, including a
        rejected circuit, raises :class:`QustodyAPIError`; a rejected job's id is then in
        ``error.extras["job_id"]``.
        """
        if isinstance(circuit, str):
            qasm = circuit
        else:
            # Imported here: Qiskit takes a while to load, and QASM text needs none of it.
            from qustody.client._convert import circuit_to_qasm

            qasm = circuit_to_qasm(circuit)
        body: dict[str, Any] = {
            "project": project,
            "backend": backend,
            "shots": shots,
            "qasm": qasm,
            "memory": memory,
            "seed": seed,
        }
        if name is not None:
            body["name"] = name
        if labels:
            body["labels"] = labels
        if priority:
            body["priority"] = priority
        if session is not None:
            body["session"] = session
        if reason is not None or ticket is not None:
            body["approval"] = {"reason": reason or "", "ticket": ticket or ""}
        return Job.from_json(self._json("POST", "/jobs", json=body))

    def job(self, job_id: str) -> Job:
        """One job, with its recorded transitions."""
        return Job.from_json(self._json("GET", f"/jobs/{_segment(job_id)}"))

    def jobs(
        self,
        state: JobState | str | None = None,
        backend: str | None = None,
        project: str | None = None,
        limit: int = 50,
    ) -> Iterator[Job]:
        """Jobs visible to this principal, newest first, across all pages.

        ``limit`` is the page size; pages are fetched lazily, as the iterator is consumed
        (``itertools.islice(client.jobs(), 20)`` fetches a single page).
        """
        params: dict[str, str | int] = {"limit": limit}
        if state is not None:
            params["state"] = str(state)
        if backend is not None:
            params["backend"] = backend
        if project is not None:
            params["project"] = project
        while True:
            page = JobPage.from_json(self._json("GET", "/jobs", params=params))
            yield from page.items
            if page.next_cursor is None:
                return
            params["cursor"] = page.next_cursor

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Wait until the job is terminal and return it (whatever the outcome).

        Each request asks the gateway to hold it until the job finishes
        (``GET /v1/jobs/{id}?wait=``, at most :data:`MAX_SERVER_WAIT` seconds a
        request), so the end of a job is seen at once, without polling.
        ``poll_interval`` is the shortest hold asked for. ``on_progress`` is
        called with the job each time its state is seen to change (including
        the first answer, which then comes at once, without a hold). Raises
        :class:`QustodyTimeoutError` after ``timeout`` seconds.
        """
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        deadline = None if timeout is None else time.monotonic() + timeout
        if on_progress is not None:
            hold = 0.0  # the first look answers at once, for the callback
        else:  # even the first request waits for the job: one round trip less
            hold = MAX_SERVER_WAIT if timeout is None else min(MAX_SERVER_WAIT, max(timeout, 0.0))
        last_state: JobState | None = None
        while True:
            params: dict[str, str | int] | None = {"wait": f"{hold:.3f}"} if hold else None
            job = Job.from_json(
                self._json("GET", f"/jobs/{_segment(job_id)}", params=params, extra_timeout=hold)
            )
            if on_progress is not None and job.state != last_state:
                on_progress(job)
            last_state = job.state
            if job.is_terminal:
                return job
            hold = MAX_SERVER_WAIT
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QustodyTimeoutError(job, timeout or 0.0)
                hold = min(hold, remaining)
            hold = max(hold, min(poll_interval, MAX_SERVER_WAIT))

    def result(self, job_id: str) -> Result:
        """The result of a completed job.

        Raises :class:`QustodyAPIError` with ``code`` ``result_not_ready``,
        ``job_failed`` or ``job_cancelled`` otherwise.
        """
        return Result.from_json(self._json("GET", f"/jobs/{_segment(job_id)}/result"))

    def cancel(self, job_id: str) -> Job:
        """Cancel a job; returns it as it stands after the request."""
        return Job.from_json(self._json("POST", f"/jobs/{_segment(job_id)}/cancel"))

    # ----------------------------------------------------------------- backends

    def backends(self) -> list[Backend]:
        return self._list(Backend, "/backends")

    def backend(self, name: str) -> Backend:
        return Backend.from_json(self._json("GET", f"/backends/{_segment(name)}"))

    # ---------------------------------------------- tenants, projects, members

    def create_tenant(self, name: str, admin_name: str) -> TenantCreated:
        """Create a tenant and its first admin (platform-admin only)."""
        body = {"name": name, "admin_name": admin_name}
        return TenantCreated.from_json(self._json("POST", "/tenants", json=body))

    def tenants(self) -> list[Tenant]:
        return self._list(Tenant, "/tenants")

    def tenant(self, tenant_id: str) -> Tenant:
        return Tenant.from_json(self._json("GET", f"/tenants/{_segment(tenant_id)}"))

    def create_project(self, name: str, data_class: str) -> Project:
        body = {"name": name, "data_class": data_class}
        return Project.from_json(self._json("POST", "/projects", json=body))

    def projects(self) -> list[Project]:
        return self._list(Project, "/projects")

    def project(self, project_id: str) -> Project:
        return Project.from_json(self._json("GET", f"/projects/{_segment(project_id)}"))

    def add_member(
        self, principal: str, role: str, project: str | None = None, kind: str = "user"
    ) -> Member:
        body = {"principal": principal, "role": role, "project": project, "kind": kind}
        return Member.from_json(self._json("POST", "/members", json=body))

    def members(self, project: str | None = None) -> list[Member]:
        params: dict[str, str | int] = {} if project is None else {"project": project}
        return self._list(Member, "/members", params)

    # ------------------------------------------------------------------- tokens

    def issue_token(
        self,
        principal: str | None = None,
        scopes: list[str] | None = None,
        ttl_seconds: int | None = None,
    ) -> IssuedToken:
        """Mint a token for yourself (``principal=None``) or, as tenant-admin, a member."""
        body: dict[str, Any] = {"principal": principal}
        if scopes is not None:
            body["scopes"] = list(scopes)
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        return IssuedToken.from_json(self._json("POST", "/tokens", json=body))

    def revoke_token(self, jti: str) -> None:
        self._request("DELETE", f"/tokens/{_segment(jti)}")

    # -------------------------------------------------------------------- audit

    def audit_key(self) -> str:
        """The audit log's verifier key as the gateway publishes it. Check it against
        one you got elsewhere before trusting what it verifies."""
        url = f"{self._url}/.well-known/qustody/audit-log-key"
        return self._request("GET", url).text.strip()

    def audit_checkpoint(self) -> str:
        """The latest signed checkpoint note."""
        return self._request("GET", "/audit/checkpoint").text

    def issue_audit_checkpoint(self) -> str:
        """Have the gateway sign a checkpoint now (platform admins)."""
        return self._request("POST", "/audit/checkpoint").text

    def audit_events(self, **filters: str | int) -> dict[str, Any]:
        """Your tenant's audit events (``actor``, ``action``, ``job``, ``since``, ...),
        each with its inclusion proof, and the checkpoint they lead to."""
        page = self._json("GET", "/audit/events", params=filters)
        if not isinstance(page, dict):
            raise QustodyProtocolError("GET /v1/audit/events answered without a JSON object")
        return page

    def audit_export(
        self, out: BinaryIO, *, scope: str = "tenant", form: str = "qustody", sealed: bool = False
    ) -> int:
        """Stream an export (JSON Lines) into ``out``: ``form`` ``qustody`` for
        ``qustody audit verify``, ``ocsf`` for a SIEM; ``sealed`` encrypts it to
        your tenant's export key (open it with ``qustody unseal``). Returns the
        bytes written."""
        written = 0
        params = {"scope": scope, "format": form, "sealed": "true" if sealed else "false"}
        try:
            with self._http.stream("GET", "/audit/export", params=params) as response:
                if not response.is_success:
                    response.read()
                    raise _error_of(response)
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    written += len(chunk)
        except httpx.TransportError as exc:
            raise QustodyConnectionError(
                f"the export from {self._url} broke off: {type(exc).__name__}"
            ) from None
        return written

    # ---------------------------------------------------- keys, secrets, exports

    def key_rings(self) -> list[dict[str, Any]]:
        """Your tenant's key rings with their versions (tenant admins)."""
        return _items(self._json("GET", "/keys"), "key ring list")

    def rotate_keys(self, project_id: str | None = None) -> list[str]:
        """Start new key versions; returns the new key ids."""
        answer = self._json("POST", "/keys/rotate", json={"project_id": project_id})
        if not isinstance(answer, dict) or not isinstance(answer.get("rotated"), list):
            raise QustodyProtocolError("POST /v1/keys/rotate answered without a rotated list")
        return [str(k) for k in answer["rotated"]]

    def set_secret(self, name: str, value: str) -> dict[str, Any]:
        """Store or replace a write-only secret; the value is never returned."""
        answer = self._json("PUT", f"/secrets/{_segment(name)}", json={"value": value})
        if not isinstance(answer, dict):
            raise QustodyProtocolError("PUT /v1/secrets answered without a JSON object")
        return answer

    def secrets(self) -> list[dict[str, Any]]:
        """Names and dates of your tenant's secrets (never values)."""
        return _items(self._json("GET", "/secrets"), "secret list")

    def delete_secret(self, name: str) -> None:
        self._request("DELETE", f"/secrets/{_segment(name)}")

    def export_key(self) -> dict[str, Any]:
        answer = self._json("GET", "/export-key")
        if not isinstance(answer, dict):
            raise QustodyProtocolError("GET /v1/export-key answered without a JSON object")
        return answer

    def set_export_key(self, public_key: str) -> dict[str, Any]:
        """Register your tenant's export public key (``qustody-xwing-pub:…``)."""
        answer = self._json("PUT", "/export-key", json={"public_key": public_key})
        if not isinstance(answer, dict):
            raise QustodyProtocolError("PUT /v1/export-key answered without a JSON object")
        return answer

    def sealed_result(self, job_id: str) -> bytes:
        """A job's result sealed to your tenant's export key (a ``qustody-sealed/1``
        file); open it with ``qustody unseal`` and the private key."""
        return self._request(
            "GET", f"/jobs/{_segment(job_id)}/result", params={"sealed": "true"}
        ).content

    # ------------------------------------------------------- tenant policies

    def policy(self) -> PolicyVersion:
        """Your tenant's policies in force (version 0 and empty text: none yet)."""
        return PolicyVersion.from_json(self._json("GET", "/policies"))

    def set_policy(
        self, text: str, *, comment: str | None = None, base_version: int | None = None
    ) -> PolicyVersion:
        """Store ``text`` (Cedar forbids) as your tenant's next policy version.

        With ``base_version`` the gateway refuses (409) if someone else changed
        the policies since that version. A policy that does not validate is
        refused (422, ``invalid_policy``) naming the policy and its line.
        """
        body: dict[str, Any] = {"text": text}
        if comment is not None:
            body["comment"] = comment
        if base_version is not None:
            body["base_version"] = base_version
        return PolicyVersion.from_json(self._json("PUT", "/policies", json=body))

    def policy_versions(self) -> list[PolicyVersion]:
        """Every version of your tenant's policies, newest first (without text)."""
        return self._list(PolicyVersion, "/policies/versions")

    def policy_version(self, version: int) -> PolicyVersion:
        return PolicyVersion.from_json(self._json("GET", f"/policies/versions/{int(version)}"))

    def policy_diff(
        self, from_version: int | None = None, to_version: int | None = None
    ) -> PolicyDiff:
        """A unified diff between two versions; by default the newest against its
        predecessor."""
        params: dict[str, str | int] = {}
        if from_version is not None:
            params["from"] = from_version
        if to_version is not None:
            params["to"] = to_version
        return PolicyDiff.from_json(self._json("GET", "/policies/diff", params=params))

    # ------------------------------------------------------------------- health

    def health(self) -> Health:
        return Health.from_json(self._json("GET", "/health"))

    def ready(self) -> Readiness:
        """Readiness; a gateway that is not ready raises :class:`QustodyAPIError` (503)."""
        return Readiness.from_json(self._json("GET", "/ready"))


def _error_of(response: httpx.Response) -> QustodyAPIError:
    """The SDK error for an unsuccessful answer (its problem document, read)."""
    return api_error_from_answer(
        status=response.status_code,
        reason=response.reason_phrase,
        content_type=response.headers.get("content-type"),
        body=response.content,
        request_id_header=response.headers.get("x-request-id"),
    )


def _items(document: object, what: str) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or not isinstance(document.get("items"), list):
        raise QustodyProtocolError(f"the {what} is not a JSON object with an items list")
    return [item for item in document["items"] if isinstance(item, dict)]
