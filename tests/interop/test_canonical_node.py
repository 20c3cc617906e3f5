"""Our RFC 8785 against independent implementations run by Node.

* Numbers: the RFC test data's deterministic double generator (tests/interop/node/numgen.mjs),
  each double serialized by ECMAScript itself (``JSON.stringify``, which RFC 8785 adopts), and
  fed to us in three spellings.
* Documents: generated JSON (nesting, Unicode, escapes, doubles, exact big integers) and the
  RFC's vector inputs, canonicalized by npm ``canonicalize`` and by us, byte for byte.
* The integers we refuse: what Node signs instead, which is why we refuse them.
"""

from __future__ import annotations

import json
import random
import struct
from decimal import Decimal
from pathlib import Path

import pytest

from tenantkeys import signing
from tenantkeys.errors import ErrorCode, InvalidRequest
from tests.interop.conftest import Node

pytestmark = pytest.mark.integration

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rfc8785"
NUMBERS = 20_000
DOCUMENTS = 400


def node_canonicalize(node: Node, texts: list[str]) -> list[str]:
    out = node.run("canonical.mjs", stdin="\n".join(json.dumps(t) for t in texts) + "\n")
    return [json.loads(line) for line in out.split("\n")]


def test_numbers_match_ecmascript_over_the_rfc_generator(node: Node) -> None:
    lines = node.run("numgen.mjs", str(NUMBERS)).split("\n")
    assert len(lines) == NUMBERS
    integers = 0
    for line in lines:
        hexa, expected = line.split(",")
        double = struct.unpack(">d", bytes.fromhex(hexa.rjust(16, "0")))[0]
        spellings = [expected, repr(double), format(Decimal(double), "e")]
        if double == int(double):
            spellings.append(str(int(double)))  # the exact integer, however large
            integers += 1
        for spelling in spellings:
            assert signing.canonicalize(spelling.encode()).decode() == expected, (hexa, spelling)
    assert integers > 100  # the generator's large doubles are integers: that path ran


def random_string(rng: random.Random) -> str:
    alphabet = [
        *"abcXYZ019 _-",
        '"',
        "\\",
        "/",
        "\n",
        "\t",
        "\x00",
        "\x1f",
        "\x7f",
        "\u00e9",
        "\u2028",
        "\u20ac",
        "\ufb33",
        "\U0001f600",
        "\U00010437",
    ]
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))


def random_number(rng: random.Random) -> int | float:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randint(-(2**53), 2**53)
    if kind == 1:
        return rng.choice([2**60, -(2**62), 10**21, 2**53 + 2, 10**300])  # exact doubles
    if kind == 2:
        return round(rng.uniform(-1000, 1000), rng.randint(0, 6))
    while True:  # any finite double, from its bits
        double = struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))[0]
        if double == double and abs(double) != float("inf"):
            return double


def random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(7 if depth < 5 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind in (1, 2):
        return random_number(rng)
    if kind in (3, 4):
        return random_string(rng)
    if kind == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_string(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def test_documents_match_npm_canonicalize(node: Node) -> None:
    rng = random.Random(8785)
    texts = [
        json.dumps(
            random_value(rng),
            indent=rng.choice([None, 1, "\t"]),
            ensure_ascii=rng.random() < 0.5,
        )
        for _ in range(DOCUMENTS)
    ]
    texts += [p.read_text() for p in sorted((VECTORS / "input").glob("*.json"))]
    theirs = node_canonicalize(node, texts)
    assert len(theirs) == len(texts)
    mismatches = [
        (text, ours, other)
        for text, other in zip(texts, theirs, strict=True)
        if (ours := signing.canonicalize(text.encode()).decode()) != other
    ]
    assert not mismatches, (
        f"{len(mismatches)} differ from npm canonicalize {node.version('canonicalize')}; "
        f"first: {mismatches[0]}"
    )


@pytest.mark.parametrize(
    "literal", ["9007199254740993", "18446744073709551615", "-12345678901234567891"]
)
def test_integers_node_would_silently_change_are_refused(node: Node, literal: str) -> None:
    (changed,) = node_canonicalize(node, [f'{{"id":{literal}}}'])
    assert changed != f'{{"id":{literal}}}'  # JSON.parse rounded it: another number is signed
    with pytest.raises(InvalidRequest) as caught:
        signing.canonicalize(f'{{"id":{literal}}}'.encode())
    assert caught.value.code == ErrorCode.JSON_NOT_I_JSON
    assert json.loads(changed, parse_int=float)["id"] == float(literal)  # the nearest double
    assert f"would sign {changed[6:-1]} instead" in caught.value.message
