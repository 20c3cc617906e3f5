"""RFC 8785 canonical JSON: the published vectors, the I-JSON edges, the depth limit, the header.

The vectors under tests/vectors/rfc8785/ are the RFC authors' own (SOURCE.md names them). The
cross-check against an independent implementation (npm ``canonicalize`` and ECMAScript's own
number serialization, run by Node) is tests/interop/test_canonical_node.py.
"""

from __future__ import annotations

import json
import math
import struct
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantkeys import jobs, signing
from tenantkeys.errors import ErrorCode, InvalidRequest
from tenantkeys.jobs.runner import JobRunner
from tests.helpers import FlakyLocal, make_runner

pytestmark = pytest.mark.unit

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rfc8785"
NAMES = sorted(p.stem for p in (VECTORS / "input").glob("*.json"))


def refused(data: bytes) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        signing.canonicalize(data)
    assert "\n" not in caught.value.one_line()
    return caught.value


def test_every_published_vector_is_there() -> None:
    assert NAMES == ["arrays", "french", "structures", "unicode", "values", "weird"]


@pytest.mark.parametrize("name", NAMES)
def test_published_vector(name: str) -> None:
    expected = (VECTORS / "output" / f"{name}.json").read_bytes()
    assert signing.canonicalize((VECTORS / "input" / f"{name}.json").read_bytes()) == expected
    assert signing.canonicalize(expected) == expected  # a canonical form stays put


def number_lines() -> list[tuple[str, str]]:
    lines = (VECTORS / "numbers.txt").read_text().split()
    return [(hexa, expected) for hexa, expected in (line.split(",") for line in lines)]


@pytest.mark.parametrize(("hexa", "expected"), number_lines())
def test_published_number_samples(hexa: str, expected: str) -> None:
    double = struct.unpack(">d", bytes.fromhex(hexa.rjust(16, "0")))[0]
    if expected == "null":  # NaN and the infinities: no JSON text names them
        assert not math.isfinite(double)
        for text in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"):
            assert refused(text).code in (ErrorCode.INVALID_JSON, ErrorCode.JSON_NOT_I_JSON)
        return
    # The double written three ways: shortest (Python's repr), exact, and RFC 8785's own text.
    for spelling in (repr(double), f"{Decimal(double):f}", expected):
        assert signing.canonicalize(spelling.encode()) == expected.encode(), spelling


@pytest.mark.parametrize(
    ("literal", "canonical"),
    [
        ("9007199254740991", "9007199254740991"),  # 2^53 - 1, the rfc8785 package's own limit
        ("9007199254740992", "9007199254740992"),  # 2^53: a double holds it exactly
        ("-9007199254740992", "-9007199254740992"),
        ("9007199254740994", "9007199254740994"),  # 2^53 + 2: exact too
        ("1152921504606846976", "1152921504606847000"),  # 2^60 exactly ...
        ("1152921504606847000", "1152921504606847000"),  # ... and as RFC 8785 writes it
        ("1000000000000000000000", "1e+21"),
        ("-0", "0"),
        ("1.0", "1"),
        ("4.50", "4.5"),
        ("1E30", "1e+30"),
        # A fraction or exponent is rounded as RFC 8785 section 3.2.2.3 says (its vectors do).
        ("333333333.33333329", "333333333.3333333"),
        ("9007199254740993.0", "9007199254740992"),
        ("1e-400", "0"),
    ],
)
def test_numbers_kept_or_rounded_as_rfc_8785_says(literal: str, canonical: str) -> None:
    assert signing.canonicalize(literal.encode()) == canonical.encode()
    assert signing.canonicalize(f"[{literal}]".encode()) == f"[{canonical}]".encode()


@pytest.mark.parametrize(
    ("literal", "signed_instead"),
    [
        ("9007199254740993", "9007199254740992"),  # 2^53 + 1
        ("-9007199254740993", "-9007199254740992"),
        ("18446744073709551615", "18446744073709552000"),  # 2^64 - 1
        ("1152921504606846977", "1152921504606847000"),
    ],
)
def test_an_integer_no_double_holds_is_refused_naming_what_would_be_signed(
    literal: str, signed_instead: str
) -> None:
    error = refused(f'{{"id": {literal}}}'.encode())
    assert error.code == ErrorCode.JSON_NOT_I_JSON
    assert literal in error.message and f"would sign {signed_instead} instead" in error.message


@pytest.mark.parametrize("literal", ["1" + "0" * 309, "9" * 5000, "-1e400", "1.5e309"])
def test_a_number_beyond_the_double_range_is_refused(literal: str) -> None:
    error = refused(literal.encode())
    assert error.code == ErrorCode.JSON_NOT_I_JSON and "double range" in error.message


def test_depth_limit_is_a_coded_refusal_before_any_parser_recurses() -> None:
    limit = signing.MAX_JSON_DEPTH
    assert signing.canonicalize(b"[" * limit + b"]" * limit) == b"[" * limit + b"]" * limit
    nested = b'{"a":' * (limit - 1) + b"[1]" + b"}" * (limit - 1)
    assert signing.canonicalize(nested) == nested
    for hostile in (
        b"[" * (limit + 1) + b"]" * (limit + 1),
        b'{"a":' * limit + b"[1]" + b"}" * limit,
        b"[" * 100_000 + b"]" * 100_000,  # a RecursionError in json and rfc8785 before
        b"[" * 100_000,  # malformed as well: the depth is what is reported
    ):
        assert refused(hostile).code == ErrorCode.JSON_TOO_DEEP


def test_brackets_inside_strings_do_not_count_toward_the_depth() -> None:
    text = json.dumps(["[" * 1000, {"k": "{" * 1000, "e": '\\"[[[' * 50}]).encode()
    assert json.loads(signing.canonicalize(text)) == json.loads(text)


@pytest.mark.parametrize(
    ("payload", "code", "says"),
    [
        (b"\xff\xfe", ErrorCode.INVALID_JSON, "not UTF-8"),
        (b'"caf\xe9"', ErrorCode.INVALID_JSON, "not UTF-8"),
        ('{"a": 1}'.encode("utf-16"), ErrorCode.INVALID_JSON, "not UTF-8"),
        (b'\xef\xbb\xbf{"a": 1}', ErrorCode.INVALID_JSON, "not JSON"),  # a byte order mark
        (b"NaN", ErrorCode.INVALID_JSON, "not a JSON number"),
        (b'{"a": Infinity}', ErrorCode.INVALID_JSON, "not a JSON number"),
        (b"{'a': 1}", ErrorCode.INVALID_JSON, "not JSON"),
        (b"[1,]", ErrorCode.INVALID_JSON, "not JSON"),
        (b"", ErrorCode.INVALID_JSON, "not JSON"),
        (b'{"a": 1, "a": 2}', ErrorCode.JSON_NOT_I_JSON, "appears twice"),
        (b'{"a": 1, "\\u0061": 1}', ErrorCode.JSON_NOT_I_JSON, "appears twice"),
        (b'[{"x": {"a": 1, "a": 1}}]', ErrorCode.JSON_NOT_I_JSON, "appears twice"),
        (b'"\\ud800"', ErrorCode.JSON_NOT_I_JSON, "unpaired surrogate"),
        (b'{"\\udc00": 1}', ErrorCode.JSON_NOT_I_JSON, "unpaired surrogate"),
        (b'["\\ude00\\ud83d"]', ErrorCode.JSON_NOT_I_JSON, "unpaired surrogate"),
    ],
)
def test_outside_json_or_i_json_is_refused_with_its_code(
    payload: bytes, code: ErrorCode, says: str
) -> None:
    error = refused(payload)
    assert error.code == code and says in error.message, error.message


def test_a_paired_surrogate_escape_is_the_character() -> None:
    assert signing.canonicalize(b'"\\ud83d\\ude00"') == '"\U0001f600"'.encode()


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"]), max_size=6), children)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES, st.booleans(), st.booleans())
def test_any_i_json_value_canonicalizes_to_itself_and_its_value(
    value: object, indent: bool, ascii_only: bool
) -> None:
    text = json.dumps(value, indent=2 if indent else None, ensure_ascii=ascii_only).encode()
    canonical = signing.canonicalize(text)
    # Compared as doubles: RFC 8785 writes 5.396613713045557e+16 as 53966137130455570.
    assert json.loads(canonical, parse_int=float) == json.loads(text, parse_int=float)
    assert signing.canonicalize(canonical) == canonical


# -- the JWS header and the job path ---------------------------------------------------------


@pytest.fixture
def runner(tmp_path: Path) -> JobRunner:
    return make_runner(tmp_path, FlakyLocal(tmp_path / "master.key"), max_retries=2)


def test_canonical_signing_says_so_in_the_protected_header(runner: JobRunner) -> None:
    service = runner.service
    plain = service.sign("acme", b'{"b": 2, "a": 1}')
    canonical = service.sign("acme", b'{"b": 2, "a": 1}', canonical_json=True)
    header = json.loads(signing.b64url_decode(canonical.jws.split(".")[0]))
    assert header[signing.CANONICAL_HEADER] is True and "crit" not in header
    assert signing.CANONICAL_HEADER not in json.loads(
        signing.b64url_decode(plain.jws.split(".")[0])
    )
    # The header tells the verifier to canonicalize: any spelling of the JSON verifies.
    service.verify("acme", b'{\n "a": 1.0,\n "b": 2\n}', canonical.jws)
    with pytest.raises(InvalidRequest) as caught:
        service.verify("acme", b'{"a": 1, "b": 3}', canonical.jws)
    assert caught.value.code == ErrorCode.SIGNATURE_INVALID


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"[" * 5000 + b"]" * 5000, ErrorCode.JSON_TOO_DEEP),
        (b"\xff not utf-8", ErrorCode.INVALID_JSON),
        (b'{"id": 9007199254740993}', ErrorCode.JSON_NOT_I_JSON),
    ],
)
def test_a_job_with_a_bad_canonical_payload_is_rejected_not_dead_lettered(
    runner: JobRunner, payload: bytes, code: ErrorCode
) -> None:
    kwargs = {"tenant_id": "acme", "payload": jobs.encode_payload(payload), "canonical_json": True}
    outcome = runner.sign(kwargs, job_id="deep")
    assert outcome.retry_in is None and outcome.result is not None
    assert outcome.result["ok"] is False and outcome.result["error"]["code"] == code
    assert runner.deadletters.depth() == 0
