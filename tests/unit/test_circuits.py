"""Validation of untrusted OpenQASM (qustody.jobs.circuits), against real Qiskit loaders.

The parser pool runs real processes forked from the sandbox's forkserver; the
only stand-in is a pool that fails the test if anything reaches a parser,
used to show that refusals happen before parsing.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qustody.domain.errors import QustodyError
from qustody.domain.models import BackendInfo, CircuitInfo
from qustody.executors.aer import QasmFormat, aer_backends, scan_qasm
from qustody.executors.errors import QasmError
from qustody.jobs.circuits import (
    CircuitLimits,
    CircuitParserPool,
    ParsedCircuit,
    check_against_backend,
    validate_circuit,
)
from support import ghz_qasm2, ghz_qasm3

GHZ2 = ghz_qasm2(5)

GHZ3 = ghz_qasm3(5)

LIMITS = CircuitLimits()


@pytest.fixture(scope="module")
def pool() -> Iterator[CircuitParserPool]:
    with CircuitParserPool(size=2) as parsers:
        yield parsers


class NoParsing(CircuitParserPool):
    """A pool that fails the test if a program reaches a parser."""

    def parse(self, source: str, fmt: QasmFormat, *, timeout: float) -> ParsedCircuit:
        raise AssertionError("the program reached a parser")


def validate(source: str, pool: CircuitParserPool, limits: CircuitLimits = LIMITS) -> CircuitInfo:
    return validate_circuit(source, limits, pool=pool)


def refused(source: str, pool: CircuitParserPool, limits: CircuitLimits = LIMITS) -> QustodyError:
    with pytest.raises(QustodyError) as caught:
        validate_circuit(source, limits, pool=pool)
    return caught.value


# -- accepted programs -----------------------------------------------------------------


@pytest.mark.parametrize(("source", "fmt"), [(GHZ2, "qasm2"), (GHZ3, "qasm3")])
def test_ghz_is_described(source: str, fmt: str, pool: CircuitParserPool) -> None:
    info = validate(source, pool)
    assert info.format == fmt
    assert info.source == source
    assert info.sha256 == hashlib.sha256(source.encode()).hexdigest()
    assert (info.num_qubits, info.num_clbits) == (5, 5)
    assert info.gate_count == 10
    assert info.depth == 6
    assert info.clbit_registers == (("c", 5),)
    assert info.operations == frozenset({"h", "cx", "measure"})


def test_no_header_means_openqasm_3(pool: CircuitParserPool) -> None:
    info = validate('include "stdgates.inc";\nqubit[2] q;\nh q[0];\ncx q[0], q[1];\n', pool)
    assert info.format == "qasm3"
    assert info.num_qubits == 2


def test_reference_loader_covers_what_the_fast_one_refuses(pool: CircuitParserPool) -> None:
    # "OPENQASM 3;" (no ".0"), loops and conditionals go to the reference loader.
    source = (
        "OPENQASM 3;\n"
        'include "stdgates.inc";\n'
        "qubit[2] q;\nbit[2] c;\n"
        "for int i in [0:3] { h q[0]; }\n"
        "c[0] = measure q[0];\n"
        "if (c[0]) { x q[1]; }\n"
        "c[1] = measure q[1];\n"
    )
    info = validate(source, pool)
    assert {"for_loop", "if_else", "h", "x", "measure"} <= info.operations


def test_custom_gates_are_reported_as_the_gates_they_use(pool: CircuitParserPool) -> None:
    source = (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\n'
        "gate bell a, b { h a; cx a, b; }\n"
        "gate twice a, b { bell a, b; bell a, b; }\n"
        "qreg q[2];\ntwice q[0], q[1];\n"
    )
    info = validate(source, pool)
    assert info.operations == frozenset({"h", "cx"})


def test_commented_out_includes_are_not_includes(pool: CircuitParserPool) -> None:
    source = GHZ3.replace(
        "qubit[5] q;",
        '// include "/etc/passwd";\n/* include "/etc/passwd"; */\nqubit[5] q;',
    )
    assert validate(source, pool).num_qubits == 5


def test_a_rust_panic_in_the_fast_loader_falls_back(pool: CircuitParserPool) -> None:
    # A single-quoted include makes the native OpenQASM 3 loader panic
    # (pyo3's PanicException, a BaseException); the reference loader takes over.
    source = "OPENQASM 3.0;\ninclude 'stdgates.inc';\nqubit[2] q;\nh q[0];\n"
    assert validate(source, pool).operations == frozenset({"h"})


def test_unicode_identifiers_in_openqasm_3(pool: CircuitParserPool) -> None:
    info = validate('OPENQASM 3;\ninclude "stdgates.inc";\nqubit[2] θ;\nh θ[0];\n', pool)
    assert info.num_qubits == 2


# -- refused before parsing ------------------------------------------------------------


def test_too_large_is_413() -> None:
    error = refused(GHZ2 + "// " + "x" * 2000 + "\n", NoParsing(), CircuitLimits(max_bytes=1000))
    assert (error.code, error.status, error.field) == ("circuit_too_large", 413, "qasm")
    assert "1000" in error.detail


def test_multibyte_text_is_measured_in_bytes() -> None:
    source = GHZ3 + "// " + "θ" * 600 + "\n"  # fewer than 1000 characters, more bytes
    assert len(source) < 1000 < len(source.encode())
    assert refused(source, NoParsing(), CircuitLimits(max_bytes=1000)).code == "circuit_too_large"


def test_too_many_statements_is_too_large() -> None:
    source = GHZ2 + "x q[0];\n" * 50
    error = refused(source, NoParsing(), CircuitLimits(max_statements=20))
    assert error.code == "circuit_too_large"
    assert "statements" in error.detail


def test_huge_register_is_refused_fast_before_parsing() -> None:
    started = time.perf_counter()
    error = refused('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[10000000];\n', NoParsing())
    assert time.perf_counter() - started < 0.05
    assert (error.code, error.status, error.field) == ("too_many_qubits", 422, "qasm")
    assert "10000000" in error.detail
    assert "1000" in error.detail


@pytest.mark.parametrize(
    "declaration",
    ["qubit[600] a;\nqubit[600] b;", "qreg a[1200];", "qubit[0x500] a;", "qubit[1_200] a;"],
)
def test_declared_qubits_are_summed_before_parsing(declaration: str) -> None:
    assert refused(f"OPENQASM 3;\n{declaration}\n", NoParsing()).code == "too_many_qubits"


def test_hardware_qubits_count() -> None:
    assert refused("OPENQASM 3;\nh $5000000;\n", NoParsing()).code == "too_many_qubits"


def test_declared_clbits_are_summed_before_parsing() -> None:
    source = "OPENQASM 3;\nqubit q;\nbit[800] a;\ncreg b[800];\n"
    error = refused(source, NoParsing())
    assert (error.code, error.field) == ("too_many_clbits", "qasm")


def test_non_literal_register_size_is_invalid() -> None:
    error = refused("OPENQASM 3;\nconst uint n = 3;\nqubit[n] q;\n", NoParsing())
    assert error.code == "invalid_circuit"
    assert error.extra["line"] == 3


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ('OPENQASM 2.0;\ninclude "/etc/passwd";\n', "qelib1.inc"),
        ('OPENQASM 2.0;\ninclude "../../../../../../etc/passwd";\n', "qelib1.inc"),
        ('OPENQASM 3.0;\ninclude "/etc/passwd";\n', "stdgates.inc"),
        ("OPENQASM 3.0;\ninclude '/etc/passwd';\n", "stdgates.inc"),
        ('include "/etc/passwd";\n', "stdgates.inc"),
        # OpenQASM 2 has no block comments: its loader would read what is inside.
        ('OPENQASM 2.0;\n/* include "/etc/passwd"; */\n', "qelib1.inc"),
        # A loader may end the comment at "\r"; the scan does.
        ('OPENQASM 3.0;\n// note\rinclude "/etc/passwd";\n', "stdgates.inc"),
        ('OPENQASM 2.0;\n// note\x0cinclude "/etc/passwd";\n', "qelib1.inc"),
        # A number right before a keyword does not hide it from a lexer.
        ('OPENQASM 3.0;\n2include "/etc/passwd";\n', "stdgates.inc"),
        ('OPENQASM 3.0;\ninclude/**/"/etc/passwd";\n', "stdgates.inc"),
        ('OPENQASM 3.0;\ninclude "stdgates.inc";\ninclude "stdgates.inc.bak";\n', "stdgates.inc"),
        ('OPENQASM 2.0;\ninclude "stdgates.inc";\n', "qelib1.inc"),
    ],
)
def test_forbidden_includes_never_reach_a_parser(source: str, allowed: str) -> None:
    error = refused(source, NoParsing())
    assert (error.code, error.status, error.field) == ("forbidden_include", 422, "qasm")
    assert allowed in error.detail
    assert isinstance(error.extra["line"], int)


def test_passwd_contents_are_never_echoed(pool: CircuitParserPool) -> None:
    passwd = Path("/etc/passwd").read_text(encoding="utf-8", errors="replace")
    fragments = {part for line in passwd.splitlines() for part in line.split(":") if len(part) > 3}
    fragments -= {"/etc/passwd", "passwd"}
    sources = [
        'OPENQASM 2.0;\ninclude "/etc/passwd";\nqreg q[1];\n',
        'OPENQASM 3.0;\ninclude "/etc/passwd";\nqubit q;\n',
        'OPENQASM 3.0;\ninclude "std\\"gates.inc";\n',
    ]
    for source in sources:
        error = refused(source, pool)
        shown = error.detail + repr(error.extra)
        assert not [fragment for fragment in fragments if fragment in shown], error.detail
        assert "root:" not in shown


@pytest.mark.parametrize(
    "source",
    [
        "",
        "   \n\t\n",
        "// nothing but a comment\n",
        "OPENQASM 3.0;\n/* never closed\nqubit q;\n",
        'OPENQASM 3.0;\ninclude "stdgates.inc\n',
        "OPENQASM 4.0;\nqubit q;\n",
        "OPENQASM;\nqubit q;\n",
        "OPENQASM 3.0;\nqubit[2] q;\ninclude;\n",
    ],
)
def test_lexically_broken_programs_are_invalid_before_parsing(source: str) -> None:
    assert refused(source, NoParsing()).code == "invalid_circuit"


def test_unpaired_surrogate_is_invalid() -> None:
    assert refused("OPENQASM 3;\nqubit q;\n// \ud800\n", NoParsing()).code == "invalid_circuit"


def test_scan_is_linear_on_a_long_line() -> None:
    source = "OPENQASM 3;\nqubit q;\n// " + "/*'\"" * 250_000 + "\n"
    started = time.perf_counter()
    scan = scan_qasm(source)
    assert time.perf_counter() - started < 1.0
    assert scan.declared_qubits == 1


@pytest.mark.parametrize("fragment", ["qubit[", "qreg q[", "qubit ", "include ", "/*", "$1"])
def test_scan_stays_linear_on_repeated_fragments(fragment: str) -> None:
    source = "OPENQASM 3;\n" + fragment * (1_000_000 // len(fragment))
    started = time.perf_counter()
    with contextlib.suppress(QasmError):
        scan_qasm(source)
    assert time.perf_counter() - started < 2.0


# -- refused by a parser ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nh q[0]\ncx q[0],q[1];\n', 5),
        ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nfoo q[0];\n', 4),
        ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nh q[7];\n', 4),
        ("OPENQASM 3.0;\nqubit[2] q;\nh q[0]\ncx q[0], q[1];\n", 3),
        ('OPENQASM 3;\ninclude "stdgates.inc";\nqubit[2] q;\nfoo q[0];\n', 4),
        ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg θ[2];\n', 3),
    ],
)
def test_parser_errors_name_the_line(source: str, line: int, pool: CircuitParserPool) -> None:
    error = refused(source, pool)
    assert (error.code, error.status, error.field) == ("invalid_circuit", 422, "qasm")
    assert error.extra["line"] == line
    assert f"line {line}" in error.detail


def test_a_rust_panic_becomes_invalid_circuit(pool: CircuitParserPool) -> None:
    # The OpenQASM 2 lexer unwraps an integer parse: a huge index panics.
    source = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nh q[99999999999999999999];\n'
    error = refused(source, pool)
    assert error.code == "invalid_circuit"
    assert "Traceback" not in error.detail
    assert "panicked at" not in error.detail
    # The parser process survived or was replaced: the pool still works.
    assert validate(GHZ2, pool).num_qubits == 5


@pytest.mark.parametrize(
    "source",
    [
        "\x00\xff\x01 garbage",
        "\x00" * 100,
        bytes(range(256)).decode("latin-1"),
        "OPENQASM 3;\nqubit q;\nU(" + "(" * 3000 + "0" + ")" * 3000 + ", 0, 0) q;\n",
        "OPENQASM 2.0;\nqreg q[1];\n" + "x" * 200_000 + " q[0];\n",
    ],
)
def test_garbage_is_invalid_and_explained(source: str, pool: CircuitParserPool) -> None:
    error = refused(source, pool)
    assert error.code in ("invalid_circuit", "forbidden_include")
    assert "Traceback" not in error.detail
    assert "\x00" not in error.detail


def test_empty_circuit_without_qubits_is_invalid(pool: CircuitParserPool) -> None:
    assert refused('OPENQASM 3.0;\ninclude "stdgates.inc";\n', pool).code == "invalid_circuit"


# -- limits checked after parsing ------------------------------------------------------


def test_too_many_gates(pool: CircuitParserPool) -> None:
    error = refused(GHZ2, pool, CircuitLimits(max_gates=9))
    assert (error.code, error.field) == ("too_many_gates", "qasm")
    assert "10" in error.detail
    assert "9" in error.detail


def test_too_deep(pool: CircuitParserPool) -> None:
    error = refused(GHZ3, pool, CircuitLimits(max_depth=5))
    assert (error.code, error.field) == ("circuit_too_deep", "qasm")


def test_parse_timeout_kills_the_parser_and_the_pool_recovers(pool: CircuitParserPool) -> None:
    # The reference OpenQASM 3 loader takes well over 50 ms for 3000 statements.
    source = 'OPENQASM 3;\ninclude "stdgates.inc";\nqubit[2] q;\n' + "h q[0];\n" * 3000
    started = time.perf_counter()
    error = refused(source, pool, CircuitLimits(parse_timeout_seconds=0.05))
    assert time.perf_counter() - started < 2
    assert (error.code, error.field) == ("circuit_parse_timeout", "qasm")
    assert validate(GHZ3, pool).num_qubits == 5


def test_parse_memory_limit_and_the_pool_recovers() -> None:
    # 2 million gates from 2000 statements: far more than 16 MiB once parsed.
    source = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1000];\n' + "h q;\n" * 2000
    with CircuitParserPool(size=1, memory_bytes=16 * 1024 * 1024) as small:
        error = refused(source, small)
        assert (error.code, error.field) == ("circuit_parse_resources", "qasm")
        assert validate(GHZ2, small).num_qubits == 5


# -- against a backend -----------------------------------------------------------------


def backend(name: str) -> BackendInfo:
    return next(b.info for b in aer_backends() if b.info.name == name)


def test_shots_must_be_positive(pool: CircuitParserPool) -> None:
    info = validate(GHZ2, pool)
    with pytest.raises(QustodyError) as caught:
        check_against_backend(info, backend("aer-statevector"), 0)
    assert (caught.value.code, caught.value.field) == ("invalid_shots", "shots")


def test_too_many_shots(pool: CircuitParserPool) -> None:
    info = validate(GHZ2, pool)
    with pytest.raises(QustodyError) as caught:
        check_against_backend(info, backend("aer-statevector"), 100_001)
    assert (caught.value.code, caught.value.field) == ("too_many_shots", "shots")
    assert "100000" in caught.value.detail


def test_backend_qubit_limit(pool: CircuitParserPool) -> None:
    source = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[30];\nh q[0];\n'
    info = validate(source, pool)
    with pytest.raises(QustodyError) as caught:
        check_against_backend(info, backend("aer-statevector"), 100)
    assert caught.value.code == "too_many_qubits"
    assert "aer-statevector" in caught.value.detail
    assert "26" in caught.value.detail
    check_against_backend(info, backend("aer-stabilizer"), 100)


def test_non_clifford_gate_on_the_stabilizer_backend(pool: CircuitParserPool) -> None:
    info = validate('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\nccx q[0],q[1],q[2];\n', pool)
    check_against_backend(info, backend("aer-statevector"), 100)
    with pytest.raises(QustodyError) as caught:
        check_against_backend(info, backend("aer-stabilizer"), 100)
    assert (caught.value.code, caught.value.field) == ("unsupported_operation", "qasm")
    assert "ccx" in caught.value.detail


def test_custom_clifford_gate_is_fine_on_the_stabilizer_backend(pool: CircuitParserPool) -> None:
    source = (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\ngate bell a, b { h a; cx a, b; }\n'
        "qreg q[2];\ncreg c[2];\nbell q[0], q[1];\nmeasure q -> c;\n"
    )
    check_against_backend(validate(source, pool), backend("aer-stabilizer"), 100)


def test_opaque_gate_is_unsupported_everywhere(pool: CircuitParserPool) -> None:
    info = validate(
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nopaque magic a;\nqreg q[1];\nmagic q[0];\n', pool
    )
    for name in ("aer-statevector", "aer-stabilizer", "aer-automatic"):
        with pytest.raises(QustodyError) as caught:
            check_against_backend(info, backend(name), 10)
        assert "magic" in caught.value.detail


# -- cost --------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [GHZ2, GHZ3])
def test_validation_is_cheap(source: str, pool: CircuitParserPool) -> None:
    validate(source, pool)
    runs = 50
    started = time.perf_counter()
    for _ in range(runs):
        validate(source, pool)
    per_call = (time.perf_counter() - started) / runs
    assert per_call < 0.01, f"{per_call * 1000:.2f} ms per validation"
