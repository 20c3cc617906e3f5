"""RFC 8785 canonical JSON (JCS) of a payload, over the whole I-JSON range (RFC 7493) it defines.

RFC 8785 reads its input as I-JSON: UTF-8, unique member names, no unpaired surrogates, and
numbers an IEEE 754 double holds. Numbers are then written the way ECMAScript writes a double.
Input outside that range is refused with the code of the rule it breaks, never quietly changed:

* not UTF-8, or not JSON (``NaN`` and ``Infinity`` are not JSON): ``TK-INVALID-JSON``;
* nested deeper than :data:`MAX_JSON_DEPTH`: ``TK-JSON-TOO-DEEP``, checked before parsing;
* a member name twice in an object, an unpaired surrogate, or a number no double holds without
  loss: ``TK-JSON-NOT-I-JSON``.

Numbers follow RFC 8785 section 3.2.2.3: each is read as the nearest IEEE 754 double and
written as ECMAScript writes it. A fraction or exponent is rounded, as the RFC's own test
vectors round it (``333333333.33333329`` becomes ``333333333.3333333``). An *integer* literal is
an exact value (an id, an amount in cents), so it is accepted only where no rounding happens:
every integer a double holds exactly (all up to 2^53, and beyond, such as 2^60), and the
shortest decimal of such a double, which is what RFC 8785 writes for it (``1152921504606847000``
for 2^60), so a canonical form canonicalizes to itself. ``9007199254740993`` (2^53 + 1) names
no double; RFC 8785 would sign ``9007199254740992``, another number than the one sent, so it is
refused: RFC 7493 section 2.2 says a receiver cannot treat it as exact, and to send it as a
string. ``1e400`` (no finite double) is refused for the same reason.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

import rfc8785

from tenantkeys.errors import ErrorCode, InvalidRequest

#: Protected-header member saying the payload signed is RFC 8785 canonical JSON (docs/verifying.md).
CANONICAL_HEADER = "jcs"
#: Deepest nesting of arrays and objects accepted: serde_json's default, far above real
#: documents and far below Python's recursion limit, which parsing and writing both use.
MAX_JSON_DEPTH = 128
#: Every integer of at most this many digits is exactly a double (10^15 < 2^53).
_EXACT_DIGITS = 15
#: A literal longer than this names no finite double (the largest is about 1.8e308); checked
#: before Python's ``int`` sees it, which refuses more than 4300 digits with its own error.
_MAX_INTEGER_DIGITS = 310
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class _NotIJson(Exception):
    """A rule of I-JSON that the parsed value breaks; the message names it."""


def canonicalize(data: bytes) -> bytes:
    """The RFC 8785 form of the JSON text ``data``; raise with the code of the rule it breaks."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"payload is not UTF-8 (invalid byte at offset {exc.start}); RFC 8785 reads "
            "I-JSON, which is UTF-8 only",
            code=ErrorCode.INVALID_JSON,
        ) from None
    depth = nesting_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise InvalidRequest(
            f"payload JSON nests arrays and objects more than {MAX_JSON_DEPTH} deep",
            code=ErrorCode.JSON_TOO_DEEP,
        )
    try:
        return _dumps(text)
    except _NotIJson as exc:
        raise InvalidRequest(
            f"payload is outside I-JSON (RFC 7493), which RFC 8785 requires: {exc}",
            code=ErrorCode.JSON_NOT_I_JSON,
        ) from None
    except (rfc8785.CanonicalizationError, UnicodeEncodeError) as exc:
        cause = exc if isinstance(exc, UnicodeEncodeError) else exc.__cause__
        if not isinstance(cause, UnicodeEncodeError):
            raise _unexpected(exc) from None
        # rfc8785 encodes strings (UTF-8) and names (UTF-16, to sort them): a surrogate that
        # has no pair stops either.
        raise InvalidRequest(
            "payload is outside I-JSON (RFC 7493), which RFC 8785 requires: a string holds an "
            "unpaired surrogate escape (\\ud800-\\udfff alone)",
            code=ErrorCode.JSON_NOT_I_JSON,
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code=ErrorCode.INVALID_JSON,
        ) from None
    except (ValueError, RecursionError) as exc:
        raise _unexpected(exc) from None


def _dumps(text: str) -> bytes:
    try:
        # Fast path: numbers parsed by json's C code; rfc8785 refuses what it cannot write.
        return rfc8785.dumps(_parse(text, numbers=False))
    except (rfc8785.IntegerDomainError, rfc8785.FloatDomainError):
        pass
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError | rfc8785.CanonicalizationError):
            raise
        # Python's int() refuses more than 4300 digits: a number beyond the double range.
    # A number beyond 2^53 or beyond the double range: parse again, each number checked
    # (kept, converted to its double, or refused naming its literal).
    return rfc8785.dumps(_parse(text, numbers=True))


def _parse(text: str, *, numbers: bool) -> Any:
    return json.loads(
        text,
        object_pairs_hook=_unique_members,
        parse_int=_number if numbers else None,
        parse_float=_number if numbers else None,
        parse_constant=_no_constant,
    )


def _unexpected(exc: Exception) -> InvalidRequest:
    # Not expected past the checks above; still the caller's input, so still coded.
    return InvalidRequest(
        f"payload is not JSON that RFC 8785 can canonicalize ({type(exc).__name__})",
        code=ErrorCode.INVALID_JSON,
    )


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in the JSON ``text``, brackets inside strings skipped.

    Counted without parsing (one regular-expression pass each for strings and brackets), so
    a hostile payload is measured before any recursive parser sees it. Malformed text gets
    a number too; the parser refuses it afterwards.
    """
    depth = deepest = 0
    for bracket in _BRACKET.finditer(_STRING.sub("", text)):
        if bracket.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    break
        else:
            depth -= 1
    return deepest


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            # Parsers disagree on which value wins (Python keeps the last, others the first),
            # so two verifiers would canonicalize one payload two ways.
            raise _NotIJson(f"the member name {_show(repr(name))} appears twice in one object")
        members[name] = value
    return members


def _no_constant(literal: str) -> Any:
    raise json.JSONDecodeError(f"{literal} is not a JSON number", literal, 0)


def _number(literal: str) -> int | float:
    """A JSON number as the value RFC 8785 writes, or :class:`_NotIJson` where I-JSON ends."""
    digits = literal.lstrip("-")
    is_integer = digits.isdigit()
    if is_integer and len(digits) <= _EXACT_DIGITS:
        return int(literal)
    if is_integer and len(digits) > _MAX_INTEGER_DIGITS:
        raise _NotIJson(f"the number {_show(literal)} is beyond the IEEE 754 double range")
    double = float(literal)  # correctly rounded, as ECMAScript's JSON.parse rounds
    if not math.isfinite(double):
        raise _NotIJson(f"the number {_show(literal)} is beyond the IEEE 754 double range")
    if not is_integer:
        # A fraction or exponent is a decimal approximation by nature: RFC 8785 rounds it to
        # the nearest double (its own vectors turn 333333333.33333329 into 333333333.3333333).
        return double
    # An integer is sent as an exact value (an id, an amount in cents). It is kept when a
    # double holds it exactly (2^60) or is written as that double's shortest decimal, which
    # is what RFC 8785 outputs (1152921504606847000 for 2^60), so canonical input stays put.
    value = Decimal(literal)
    if value != Decimal(double) and value != Decimal(repr(double)):
        raise _NotIJson(
            f"the integer {_show(literal)} is not exactly an IEEE 754 double; RFC 8785 would "
            f"sign {rfc8785.dumps(double).decode()} instead (send it as a JSON string, as "
            "RFC 7493 section 2.2 advises)"
        )
    if abs(double) < 2**53:
        return int(literal)  # the rfc8785 package writes integers below 2^53 itself
    return double


def _show(text: str) -> str:
    """A sender-chosen value, short enough for a one-line error."""
    return text if len(text) <= 40 else text[:37] + "..."
