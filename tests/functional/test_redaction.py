"""Redaction: nothing a full job run produces carries a key, a token or payload bytes.

A real gateway (``qustody serve``, embedded worker) runs on loopback with every
Python logger at DEBUG, its stdout and stderr (and its worker's) in one file.
Over real HTTP the test runs a job with a distinctive circuit, name and
labels; provokes refusals (no token, garbage, bad signature, expired, another
tenant's token, invalid circuits, malformed and oversized bodies, wrong
types); and reads the audit log (events, proofs, platform and tenant exports
in both formats). Then every byte is collected: the server's log, every
response's headers and body, the audit tables (read with SQL), and on SQLite
the database file itself. They are searched for:

* every bearer token sent (the whole JWT and its signature);
* the master key, the keyring's file key, every KEK in the keyring (opened
  here with the master key), every data key (unwrapped here from
  ``sealed_objects``), the token signing key and the audit log's signing key;
  as raw bytes, hex, and base64 / base64url at each of the three alignments
  a value can have inside a longer base64 text;
* the payload: the circuit's source, the markers hidden in it (a comment, the
  quantum and classical register names), the job's name and labels, the result
  counts as serialised, and markers put into refused requests.

Keys and tokens may appear nowhere. Payload may appear only in the answers
that return it to its tenant (the result; name and labels in job reads and
lists); never in a log, an audit event or an export. One exception is by
design: a refused circuit's 422 quotes the offending token of the program
back to its submitter (``QasmError``: "quotes nothing but the program"), so a
marker used as a gate name may appear in that one answer, and nowhere else (a
refused circuit "leaves a rejected job with its hash only"); a marker in a
comment may not appear even there. A failure names the secret by label and
where it was found, with the byte offset; never the secret itself.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from joserfc import jwt
from joserfc.jwk import OKPKey
from sqlalchemy import text

from qustody.api.app import build_runtime
from qustody.audit.note import Signer
from qustody.crypto import local
from qustody.crypto.local import LocalKeyring, parse_master_key
from support import Gateway, free_port, inspection_engine, make_settings, seed, wait_ready

pytestmark = pytest.mark.slow

BACKEND = "aer-statevector"
#: Generous: waits are on state, never on how fast this machine is.
JOB_DEADLINE_SECONDS = 300.0
AUDIT_TABLES = ("audit_events", "audit_head", "audit_tree", "audit_tree_head", "audit_checkpoints")
TERMINAL = {"completed", "failed", "cancelled", "rejected"}

#: Tags on responses that legitimately return payload to its tenant.
RESULT = "result"  # GET /v1/jobs/{id}/result by the owner: counts and clbit register names
JOB_VIEW = "job-view"  # a job read or list by a member of its tenant: name and labels
INVALID_ANSWER = "invalid-answer"  # the 422 to the submitter of a refused circuit


# -- what is searched for, and where -------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    label: str
    forms: tuple[tuple[str, bytes], ...] = field(repr=False)
    #: Response tags under which this secret may legitimately appear.
    allowed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Artifact:
    where: str
    data: bytes = field(repr=False)
    tags: frozenset[str] = frozenset()


def _b64_cores(raw: bytes) -> Iterator[tuple[str, bytes]]:
    """The part of base64(x) that depends on ``raw`` alone, for each of the three
    offsets ``raw`` can have inside a longer encoded value ``x``."""
    for shift in range(3):
        padded = bytes(shift) + raw
        start = -(-shift // 3) * 4
        end = len(padded) // 3 * 4
        core = base64.b64encode(padded)[start:end]
        if len(core) >= 16:
            yield f"base64@{shift}", core
            yield f"base64url@{shift}", core.replace(b"+", b"-").replace(b"/", b"_")


def forms_of(value: bytes | str) -> tuple[tuple[str, bytes], ...]:
    raw = value.encode() if isinstance(value, str) else value
    forms: dict[bytes, str] = {raw: "raw"}
    as_json = json.dumps(raw.decode("latin-1"))[1:-1].encode()
    forms.setdefault(as_json, "json-escaped")
    forms.setdefault(repr(raw)[2:-1].encode(), "python-repr")
    forms.setdefault(raw.hex().encode(), "hex")
    forms.setdefault(raw.hex().upper().encode(), "HEX")
    for name, core in _b64_cores(raw):
        forms.setdefault(core, name)
    return tuple((name, needle) for needle, name in forms.items() if len(needle) >= 12)


def secret(label: str, *values: bytes | str, allowed: Iterable[str] = ()) -> Secret:
    forms: list[tuple[str, bytes]] = []
    for value in values:
        forms.extend(forms_of(value))
    return Secret(label, tuple(forms), frozenset(allowed))


def leaks(artifacts: Iterable[Artifact], secrets_: Iterable[Secret]) -> list[str]:
    """``<secret label> [<encoding>] in <where> at byte <offset>``, one line per leak."""
    found = []
    wanted = list(secrets_)
    for artifact in artifacts:
        for s in wanted:
            if s.allowed & artifact.tags:
                continue
            for encoding, needle in s.forms:
                at = artifact.data.find(needle)
                if at >= 0:
                    found.append(f"{s.label} [{encoding}] in {artifact.where} at byte {at}")
                    break
    return found


def assert_clean(artifacts: Iterable[Artifact], secrets_: Iterable[Secret]) -> None:
    found = leaks(artifacts, secrets_)
    assert not found, f"{len(found)} leak(s):\n" + "\n".join(found)


# -- the recorded run ------------------------------------------------------------------


@dataclass
class Exchange:
    n: int
    label: str
    method: str
    path: str
    status: int
    expected: int
    tags: frozenset[str]
    audit: bool
    headers: bytes = field(repr=False)
    body: bytes = field(repr=False)

    @property
    def where(self) -> str:
        return f"response #{self.n} ({self.label}: {self.method} {self.path} -> {self.status})"


class Recorder:
    """An HTTP client that keeps every response, headers and body, as bytes."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=120)
        self.exchanges: list[Exchange] = []

    def call(
        self,
        label: str,
        method: str,
        path: str,
        *,
        expect: int,
        token: str | None = None,
        tags: Iterable[str] = (),
        audit: bool = False,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        answer = self.client.request(method, path, headers=sent, **kwargs)
        self.exchanges.append(
            Exchange(
                len(self.exchanges) + 1,
                label,
                method,
                answer.request.url.raw_path.decode("ascii", "replace"),
                answer.status_code,
                expect,
                frozenset(tags),
                audit,
                b"\r\n".join(k + b": " + v for k, v in answer.headers.raw),
                answer.content,
            )
        )
        return answer


@dataclass
class Markers:
    """Random strings hidden in the payload and in refused requests."""

    comment: str
    qreg: str
    creg: str
    name: str
    label_value: str
    label_key: str
    invalid_comment: str
    invalid_identifier: str
    malformed_json: str
    wrong_type: str
    unknown_field_value: str
    oversized_body: str
    oversized_circuit: str
    garbage_token: str
    basic_credential: str
    tenant_secret: str

    @classmethod
    def fresh(cls) -> Markers:
        names = cls.__dataclass_fields__
        # Lowercase letters first: OpenQASM 2 identifiers cannot start with a capital.
        return cls(**{n: f"zq{n.replace('_', '')[:6]}{secrets.token_hex(12)}" for n in names})


@dataclass(repr=False)
class Run:
    """What one run produced. Its ``repr`` shows none of it: failures print labels only."""

    backend: str
    data_dir: Path
    database_url: str
    markers: Markers
    qasm: str
    job_id: str
    rejected_job_ids: list[str]
    result: dict[str, Any]
    counts_json: list[str]
    metadata_supported: bool
    secrets_supported: bool
    tokens: dict[str, str]
    exchanges: list[Exchange]
    log: bytes
    audit_rows: list[Artifact]
    db_files: list[Artifact]
    key_secrets: list[Secret]

    def __repr__(self) -> str:
        return f"Run({self.backend})"


def _distinctive_qasm(m: Markers) -> str:
    q, a, b = f"q{m.qreg}", f"c{m.creg}a", f"c{m.creg}b"
    return (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\n'
        f"// {m.comment}\n"
        f"qreg {q}[5];\ncreg {a}[3];\ncreg {b}[2];\n"
        f"h {q}[0];\ncx {q}[0], {q}[1];\nry(0.9) {q}[2];\nx {q}[3];\nrx(2.1) {q}[4];\n"
        f"cx {q}[2], {q}[4];\n"
        f"measure {q}[0] -> {a}[0];\nmeasure {q}[1] -> {a}[1];\nmeasure {q}[2] -> {a}[2];\n"
        f"measure {q}[3] -> {b}[0];\nmeasure {q}[4] -> {b}[1];\n"
    )


def _sitecustomize(directory: Path) -> Path:
    """A ``sitecustomize`` that puts every logger of every Python process of the
    gateway (API, embedded worker, forked helpers) at DEBUG on stderr."""
    directory.mkdir()
    (directory / "sitecustomize.py").write_text(
        textwrap.dedent(
            """\
            import logging, os, sys
            logging.basicConfig(
                level=logging.DEBUG,
                stream=sys.stderr,
                format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
            )
            # SQLAlchemy pins its loggers at WARNING unless they are set first.
            logging.getLogger("sqlalchemy").setLevel(logging.DEBUG)
            logging.captureWarnings(True)
            logging.getLogger("redaction.probe").debug("DEBUG on in process %d", os.getpid())
            """
        )
    )
    return directory


def _expired_token(data_dir: Path, principal_id: str, tenant_id: str) -> str:
    """A token signed with the gateway's own key whose lifetime ended an hour ago."""
    key = OKPKey.import_key((data_dir / "token-signing-key.pem").read_bytes())
    then = int(time.time()) - 3600
    claims = {
        "iss": "qustody",
        "aud": "qustody-api",
        "sub": principal_id,
        "tid": tenant_id,
        "jti": secrets.token_urlsafe(18),
        "iat": then,
        "nbf": then,
        "exp": then + 600,
        "scope": "*",
    }
    header = {"alg": "Ed25519", "kid": key.thumbprint(), "typ": "at+jwt"}
    return jwt.encode(header, claims, key, algorithms=["Ed25519"])


def _job(qasm: str, **extra: Any) -> dict[str, Any]:
    return {"project": "research", "backend": BACKEND, "shots": 1000, "qasm": qasm, **extra}


def _play(rec: Recorder, m: Markers, tokens: dict[str, str]) -> dict[str, Any]:
    """The whole conversation with the gateway; returns what later checks need."""
    dev, admin, viewer = tokens["developer"], tokens["tenant-admin"], tokens["viewer"]
    outsider, root = tokens["outsider"], tokens["platform-admin"]

    rec.call("health", "GET", "/v1/health", expect=200)
    spec = rec.call("openapi", "GET", "/openapi.json", expect=200).json()
    submit_fields = spec["components"]["schemas"]["JobSubmit"]["properties"]
    metadata_supported = {"name", "labels"} <= submit_fields.keys()
    secrets_supported = "put" in spec["paths"].get("/v1/secrets/{name}", {})

    # 1. A full job.
    qasm = _distinctive_qasm(m)
    extra: dict[str, Any] = {"seed": 424242}
    if metadata_supported:  # name and labels: sealed as the job's user metadata
        extra["name"] = f"run {m.name}"
        extra["labels"] = {"team": m.label_value, m.label_key: "present"}
    submitted = rec.call(
        "submit",
        "POST",
        "/v1/jobs",
        expect=202,
        token=dev,
        tags=[JOB_VIEW],
        json=_job(qasm, **extra),
    )
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + JOB_DEADLINE_SECONDS
    state = submitted.json()["state"]
    while state not in TERMINAL and time.monotonic() < deadline:
        state = rec.call(
            "wait for the job",
            "GET",
            f"/v1/jobs/{job_id}",
            expect=200,
            token=dev,
            tags=[JOB_VIEW],
            params={"wait": 30},
        ).json()["state"]
    assert state == "completed", f"the job ended {state}"
    result = rec.call(
        "result (owner)", "GET", f"/v1/jobs/{job_id}/result", expect=200, token=dev, tags=[RESULT]
    ).json()
    rec.call(
        "job read (owner)", "GET", f"/v1/jobs/{job_id}", expect=200, token=dev, tags=[JOB_VIEW]
    )
    rec.call(
        "job read (tenant admin)",
        "GET",
        f"/v1/jobs/{job_id}",
        expect=200,
        token=admin,
        tags=[JOB_VIEW],
    )
    rec.call("job list (owner)", "GET", "/v1/jobs", expect=200, token=dev, tags=[JOB_VIEW])
    rec.call("job list (viewer)", "GET", "/v1/jobs", expect=200, token=viewer, tags=[JOB_VIEW])
    rec.call("backends", "GET", "/v1/backends", expect=200, token=dev)

    # A tenant secret, where this gateway has the write-only vault.
    if secrets_supported:
        rec.call(
            "secret set",
            "PUT",
            "/v1/secrets/redaction-probe",
            expect=200,
            token=admin,
            json={"value": m.tenant_secret},
        )
        rec.call("secret list", "GET", "/v1/secrets", expect=200, token=admin)

    # 2. Refusals.
    rec.call("no token", "GET", f"/v1/jobs/{job_id}", expect=401)
    rec.call("garbage token", "GET", f"/v1/jobs/{job_id}", expect=401, token=tokens["garbage"])
    rec.call(
        "bad signature", "GET", f"/v1/jobs/{job_id}", expect=401, token=tokens["bad-signature"]
    )
    rec.call("expired token", "GET", f"/v1/jobs/{job_id}", expect=401, token=tokens["expired"])
    rec.call(
        "basic scheme",
        "GET",
        f"/v1/jobs/{job_id}",
        expect=401,
        headers={"Authorization": f"Basic {m.basic_credential}"},
    )
    rec.call("job read (other tenant)", "GET", f"/v1/jobs/{job_id}", expect=404, token=outsider)
    rec.call(
        "result (other tenant)", "GET", f"/v1/jobs/{job_id}/result", expect=404, token=outsider
    )
    rec.call(
        "cancel (other tenant)", "POST", f"/v1/jobs/{job_id}/cancel", expect=404, token=outsider
    )
    listed = rec.call("job list (other tenant)", "GET", "/v1/jobs", expect=200, token=outsider)
    assert job_id not in listed.text
    rec.call("submit (viewer)", "POST", "/v1/jobs", expect=403, token=viewer, json=_job(qasm))
    rejected: list[str] = []
    invalid_comment = (
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\n'
        f"h q[0] // {m.invalid_comment}\nh q[1];\n"
    )
    answer = rec.call(
        "invalid circuit (marker in a comment)",
        "POST",
        "/v1/jobs",
        expect=422,
        token=dev,
        json=_job(invalid_comment),
    )
    rejected.append(answer.json().get("job_id", ""))
    invalid_identifier = (
        f'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\n{m.invalid_identifier} q[0];\n'
    )
    answer = rec.call(
        "invalid circuit (marker as a gate name)",
        "POST",
        "/v1/jobs",
        expect=422,
        token=dev,
        tags=[INVALID_ANSWER],
        json=_job(invalid_identifier),
    )
    rejected.append(answer.json().get("job_id", ""))
    for job in rejected:
        rec.call(
            "rejected job read (owner)",
            "GET",
            f"/v1/jobs/{job}",
            expect=200,
            token=dev,
            tags=[JOB_VIEW],
        )
    rec.call(
        "job list after refusals (viewer)",
        "GET",
        "/v1/jobs",
        expect=200,
        token=viewer,
        tags=[JOB_VIEW],
    )
    rec.call(
        "oversized circuit",
        "POST",
        "/v1/jobs",
        expect=413,
        token=dev,
        json=_job(qasm + f"// {m.oversized_circuit} " + "x" * (1024 * 1024) + "\n"),
    )
    rec.call(
        "oversized body",
        "POST",
        "/v1/jobs",
        expect=413,
        token=dev,
        headers={"content-type": "application/json"},
        content=json.dumps(_job(f"// {m.oversized_body}\n" + "y" * (3 * 1024 * 1024))),
    )
    rec.call(
        "malformed JSON",
        "POST",
        "/v1/jobs",
        expect=400,
        token=dev,
        headers={"content-type": "application/json"},
        content=f'{{"project": "research", "qasm": "{m.malformed_json}'.encode(),
    )
    rec.call(
        "wrong type",
        "POST",
        "/v1/jobs",
        expect=422,
        token=dev,
        json={**_job(qasm), "shots": m.wrong_type},
    )
    rec.call(
        "wrong type (qasm as a list)",
        "POST",
        "/v1/jobs",
        expect=422,
        token=dev,
        json={**_job(qasm), "qasm": [m.wrong_type, qasm]},
    )
    rec.call(
        "unknown field",
        "POST",
        "/v1/jobs",
        expect=422,
        token=dev,
        json={**_job(qasm), "comment": m.unknown_field_value},
    )

    # 3. The audit log.
    rec.call("checkpoint", "POST", "/v1/audit/checkpoint", expect=200, token=root, audit=True)
    rec.call("log key", "GET", "/.well-known/qustody/audit-log-key", expect=200, audit=True)
    rec.call("latest checkpoint", "GET", "/v1/audit/checkpoint", expect=200, audit=True)
    events = rec.call(
        "events of the job",
        "GET",
        "/v1/audit/events",
        expect=200,
        token=admin,
        audit=True,
        params={"job": job_id, "limit": 500},
    ).json()["items"]
    after = 0
    while True:
        page = rec.call(
            "events",
            "GET",
            "/v1/audit/events",
            expect=200,
            token=admin,
            audit=True,
            params={"after": after, "limit": 500},
        ).json()
        if page["next"] is None:
            break
        after = page["next"]
    for item in events[:3]:
        seq = item["event"]["seq"]
        rec.call(
            "event proof", "GET", f"/v1/audit/events/{seq}", expect=200, token=admin, audit=True
        )
    for who, token, scope in (
        ("platform admin", root, "platform"),
        ("tenant admin", admin, "tenant"),
        ("other tenant's admin", tokens["globex-admin"], "tenant"),
    ):
        for form in ("qustody", "ocsf"):
            rec.call(
                f"{form} export, {scope} ({who})",
                "GET",
                "/v1/audit/export",
                expect=200,
                token=token,
                audit=True,
                params={"scope": scope, "format": form},
            )
    return {
        "qasm": qasm,
        "job_id": job_id,
        "rejected": [j for j in rejected if j],
        "result": result,
        "metadata_supported": metadata_supported,
        "secrets_supported": secrets_supported,
    }


# -- key material, read back from the data directory -------------------------------------


def _key_secrets(data_dir: Path, database_url: str) -> list[Secret]:
    found: list[Secret] = []
    master_text = (data_dir / "master.key").read_text("ascii").strip()
    master = parse_master_key(master_text, source="test")
    found.append(secret("master key (file text)", master_text))
    found.append(secret("master key", master.reveal()))
    found.append(
        secret(
            "keyring file key",
            local._hkdf(master, local._HKDF_ENCRYPTION_INFO),
        )
    )
    keyring = LocalKeyring(data_dir / "keyring.json", master)
    keks = keyring._keys  # the test reads the material it searches for
    assert keks, "the keyring holds no keys"
    for (ring, version), entry in sorted(keks.items()):
        found.append(secret(f"KEK {ring} v{version}", entry.material.reveal()))
    engine = inspection_engine(database_url)
    try:
        with engine.connect() as connection:
            sealed = connection.execute(
                text("SELECT object_id, field, key_id, wrapped_dek FROM sealed_objects")
            ).all()
    finally:
        engine.dispose()
    assert sealed, "nothing was sealed"
    for object_id, name, key_id, wrapped in sealed:
        dek = keyring.unwrap(str(key_id), bytes(wrapped))
        found.append(secret(f"data key of {object_id}/{name}", dek))

    pem = (data_dir / "token-signing-key.pem").read_bytes()
    body = "".join(
        line for line in pem.decode("ascii").splitlines() if line and not line.startswith("-----")
    )
    signing = load_pem_private_key(pem, password=None)
    found.append(secret("token signing key (PEM body)", body))
    found.append(secret("token signing key (DER)", base64.b64decode(body)))
    found.append(
        secret(
            "token signing key",
            signing.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
        )
    )

    audit_text = (data_dir / "audit-log.key").read_text("ascii").strip()
    signer = Signer.parse(audit_text)
    found.append(secret("audit log signing key (file text)", audit_text))
    found.append(secret("audit log signing key (material)", audit_text.rsplit("+", 1)[1]))
    found.append(
        secret(
            "audit log signing key",
            signer.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
        )
    )
    return found


def _audit_rows(database_url: str) -> list[Artifact]:
    rows: list[Artifact] = []
    engine = inspection_engine(database_url)
    try:
        with engine.connect() as connection:
            for table in AUDIT_TABLES:
                result = connection.execute(text(f"SELECT * FROM {table}"))  # noqa: S608
                columns = list(result.keys())
                for n, row in enumerate(result):
                    cells = []
                    for column, value in zip(columns, row, strict=True):
                        data = (
                            bytes(value)
                            if isinstance(value, bytes | memoryview)
                            else str(value).encode()
                        )
                        cells.append(column.encode() + b"=" + data)
                    rows.append(Artifact(f"table {table} row {n + 1}", b"\x00".join(cells)))
    finally:
        engine.dispose()
    return rows


# -- the gateway -----------------------------------------------------------------------


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp(f"redaction-{request.param}")
    if request.param == "sqlite":
        database_url = f"sqlite:///{root / 'data' / 'qustody.db'}"
    else:
        database_url = request.getfixturevalue("postgres_server")
    runtime = build_runtime(make_settings(root, database_url))
    server: subprocess.Popen[bytes] | None = None
    try:
        tenancy = seed(runtime)
        port = free_port()
        gw = Gateway(f"http://127.0.0.1:{port}", tenancy, root / "data", database_url)
        env = gw.env()
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_sitecustomize(root / "site")), env.get("PYTHONPATH")) if p
        )
        log_path = root / "server.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "qustody.cli", "serve", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_ready(gw.url, server, log_path, timeout=180)

        markers = Markers.fresh()
        tokens = {
            role: gw.token_for(role)
            for role in ("developer", "tenant-admin", "viewer", "outsider", "platform-admin")
        }
        tokens["globex-admin"] = tenancy.token_for("globex-admin", "globex")
        dev_head = tokens["developer"].rsplit(".", 1)[0]
        tokens["bad-signature"] = f"{dev_head}.{tokens['outsider'].rsplit('.', 1)[1]}"
        tokens["expired"] = _expired_token(
            gw.data_dir, tenancy.developer.id, tenancy.developer.tenant_id
        )
        tokens["garbage"] = f"eyJub3QiOiJhIHRva2VuIn0.{markers.garbage_token}.c2lnbmF0dXJl"

        recorder = Recorder(gw.url)
        try:
            played = _play(recorder, markers, tokens)
        finally:
            recorder.client.close()
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        db_files = []
        if request.param == "sqlite":
            for path in sorted((root / "data").glob("qustody.db*")):
                if path.is_file():
                    db_files.append(Artifact(f"database file {path.name}", path.read_bytes()))
        counts = played["result"]["counts"]
        yield Run(
            backend=request.param,
            data_dir=gw.data_dir,
            database_url=database_url,
            markers=markers,
            qasm=played["qasm"],
            job_id=played["job_id"],
            rejected_job_ids=played["rejected"],
            result=played["result"],
            counts_json=[
                json.dumps(counts, separators=(",", ":")),
                json.dumps(counts),
                json.dumps(counts, sort_keys=True, separators=(",", ":")),
                json.dumps(counts, sort_keys=True),
            ],
            metadata_supported=played["metadata_supported"],
            secrets_supported=played["secrets_supported"],
            tokens=tokens,
            exchanges=recorder.exchanges,
            log=log_path.read_bytes(),
            audit_rows=_audit_rows(database_url),
            db_files=db_files,
            key_secrets=_key_secrets(gw.data_dir, database_url),
        )
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait(10)
        runtime.close()
        if request.param == "postgres":
            admin_url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute("DROP SCHEMA public CASCADE")
                conn.execute("CREATE SCHEMA public")


# -- what is searched for ----------------------------------------------------------------


def token_secrets(run: Run) -> list[Secret]:
    found = []
    for role, token in run.tokens.items():
        found.append(secret(f"bearer token ({role})", token))
        found.append(secret(f"bearer token signature ({role})", token.rsplit(".", 1)[-1]))
    return found


def payload_secrets(run: Run) -> list[Secret]:
    m = run.markers
    found = [
        secret("circuit source", run.qasm),
        secret("marker in the circuit's comment", m.comment),
        secret("marker in the quantum register's name", m.qreg),
        secret("marker in the classical registers' names", m.creg, allowed=[RESULT]),
        secret("result counts (as serialised)", *run.counts_json, allowed=[RESULT]),
        secret("marker in a refused circuit's comment", m.invalid_comment),
        # The product quotes a refused program's offending token back to its
        # submitter ("gate '<name>' is not defined"); nowhere else.
        secret(
            "marker as a refused circuit's gate name",
            m.invalid_identifier,
            allowed=[INVALID_ANSWER],
        ),
        secret("marker in a malformed JSON body", m.malformed_json),
        secret("marker in a wrongly typed field", m.wrong_type),
        secret("marker in an unknown field's value", m.unknown_field_value),
        secret("marker in an oversized body", m.oversized_body),
        secret("marker in an oversized circuit", m.oversized_circuit),
        secret("marker in a garbage bearer token", m.garbage_token),
        secret("marker in a Basic credential", m.basic_credential),
    ]
    if run.metadata_supported:
        found += [
            secret("job name", m.name, allowed=[JOB_VIEW]),
            secret("job label value", m.label_value, allowed=[JOB_VIEW]),
            secret("job label key", m.label_key, allowed=[JOB_VIEW]),
        ]
    if run.secrets_supported:
        found.append(secret("tenant secret value", m.tenant_secret))
    return found


def every_secret(run: Run) -> list[Secret]:
    return run.key_secrets + token_secrets(run) + payload_secrets(run)


def responses(run: Run, *, audit: bool) -> list[Artifact]:
    out = []
    for x in run.exchanges:
        if x.audit == audit:
            out.append(Artifact(f"{x.where} headers", x.headers))
            out.append(Artifact(f"{x.where} body", x.body, x.tags))
    return out


# -- the checks --------------------------------------------------------------------------


def test_the_run_did_what_it_meant_to(run: Run) -> None:
    wrong = [f"{x.where}, expected {x.expected}" for x in run.exchanges if x.status != x.expected]
    assert not wrong, "\n".join(wrong)
    assert len(run.rejected_job_ids) == 2
    assert sum(run.result["counts"].values()) == 1000
    assert [name for name, _ in run.result["clbit_registers"]] == [
        f"c{run.markers.creg}a",
        f"c{run.markers.creg}b",
    ]
    # Every process logged at DEBUG: the API, its embedded worker, their helpers.
    probes = run.log.count(b" DEBUG redaction.probe: DEBUG on in process ")
    assert probes >= 2, f"{probes} process(es) logged at DEBUG"
    worker_started = b" INFO qustody.jobs.worker: worker " in run.log
    assert worker_started, "the embedded worker logged nothing"
    assert any(a.where.startswith("table audit_events") for a in run.audit_rows)


def test_a_refused_circuit_is_answered_with_its_position(run: Run) -> None:
    for label, line in (
        ("invalid circuit (marker in a comment)", 4),
        ("invalid circuit (marker as a gate name)", 4),
    ):
        (answer,) = [json.loads(x.body) for x in run.exchanges if x.label == label]
        assert (answer["code"], answer["line"]) == ("invalid_circuit", line)
        assert answer["job_id"] in run.rejected_job_ids


def test_the_search_finds_what_is_there(run: Run) -> None:
    """The search is not vacuous: payload is found where it is returned, and
    key material is found, in the encodings searched, in the files that hold it."""
    by_label = {s.label: s for s in every_secret(run)}

    def holders(label: str, artifacts: list[Artifact]) -> set[str]:
        unrestricted = Secret(label, by_label[label].forms)
        return {line.split(" in ", 1)[1] for line in leaks(artifacts, [unrestricted])}

    result_body = [Artifact(x.where, x.body) for x in run.exchanges if x.label == "result (owner)"]
    assert holders("result counts (as serialised)", result_body)
    assert holders("marker in the classical registers' names", result_body)
    if run.metadata_supported:
        reads = [Artifact(x.where, x.body) for x in run.exchanges if x.label == "job read (owner)"]
        assert holders("job name", reads)
        assert holders("job label key", reads)
    files = {
        name: Artifact(name, (run.data_dir / name).read_bytes())
        for name in ("master.key", "token-signing-key.pem", "audit-log.key")
    }
    assert holders("master key", [files["master.key"]])
    assert holders("token signing key (PEM body)", [files["token-signing-key.pem"]])
    # The seed sits one byte into the key's base64 (after its type byte).
    assert holders("audit log signing key", [files["audit-log.key"]])


def test_the_server_log_holds_no_key_token_or_payload(run: Run) -> None:
    assert_clean([Artifact("server log (stdout and stderr, DEBUG)", run.log)], every_secret(run))


def test_audit_events_and_exports_hold_no_key_token_or_payload(run: Run) -> None:
    assert_clean(responses(run, audit=True), every_secret(run))


def test_the_audit_tables_hold_no_key_token_or_payload(run: Run) -> None:
    assert_clean(run.audit_rows, every_secret(run))


def test_responses_hold_no_key_or_token_and_payload_only_for_its_owner(run: Run) -> None:
    assert_clean(responses(run, audit=False), every_secret(run))


def test_the_database_file_holds_no_key_token_or_plain_payload(run: Run) -> None:
    if not run.db_files:
        pytest.skip("the database is a server, not a file")
    m = run.markers
    sealed = [
        secret("circuit source", run.qasm),
        secret("marker in the circuit's comment", m.comment),
        secret("marker in the quantum register's name", m.qreg),
        secret("marker in the classical registers' names", m.creg),
        secret("result counts (as serialised)", *run.counts_json),
        # "A refused circuit leaves a rejected job with its hash only" (architecture.md).
        secret("marker in a refused circuit's comment", m.invalid_comment),
        secret("marker as a refused circuit's gate name", m.invalid_identifier),
    ]
    if run.metadata_supported:
        sealed += [secret("job name", m.name), secret("job label value", m.label_value)]
    if run.secrets_supported:
        sealed.append(secret("tenant secret value", m.tenant_secret))
    assert_clean(run.db_files, run.key_secrets + token_secrets(run) + sealed)
