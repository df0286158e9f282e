"""JSON encoding of what jobs carry (arguments, results, details), with a size cap.

Payloads are JSON, never pickle: a database row can always be read by any process and
never executes code when decoded. Nothing here knows about storage or threads.
"""

from __future__ import annotations

import json
import re
import reprlib
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from .errors import InvalidJob, InvalidJobType

DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _c_to_json(value: Any) -> str:
    """`_encoder.encode(value)`, a third cheaper for a list or dict: it makes the C encoder
    `JSONEncoder.iterencode` makes for `_encoder`'s settings (fresh circular-reference
    markers each call, as there) without the Python layers around it."""
    if isinstance(value, str):
        return _encoder.encode(value)
    return "".join(c_make_encoder({}, _encoder.default, encode_basestring, None, ":", ",",
                                  False, False, False)(value, 0))


def _c_encoder_matches() -> bool:
    """True if `_c_to_json` gives what `_encoder.encode` gives. `c_make_encoder` is the json
    module's internal accelerator: absent on some Pythons, and its arguments could change
    in a later one. Then (False) every value takes the public encoder, `_encoder.encode`."""
    sample = [[1, 2.5, "é\n", None, True, {"k": [False]}], {"x": -0.0, "y": 10**20}]
    try:
        return c_make_encoder is not None and _c_to_json(sample) == _encoder.encode(sample)
    except Exception:
        return False


_to_json = _c_to_json if _c_encoder_matches() else _encoder.encode

_decode = json.loads
_raw_decode = json.JSONDecoder().raw_decode


def payload_cap(max_payload_bytes: Any) -> int | None:
    """A store's `max_payload_bytes` checked: an int >= 1, or None (no cap). Every store
    that takes it checks it here, at construction: 0 or -5 refused every later payload
    (even `[[],{}]`, and a result, failing a job whose function succeeded)."""
    if max_payload_bytes is None:
        return None
    if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int) or max_payload_bytes < 1:
        raise ValueError(f"max_payload_bytes must be a number of bytes >= 1 (an int), or None for no cap,"
                         f" got {max_payload_bytes!r}")
    return max_payload_bytes


def encode(value: Any, *, field: str, max_bytes: int | None = None, _check_keys: bool = True) -> str:
    """Encode `value` as compact JSON, raising a `TypeError`/`ValueError` naming `field`
    (a dict key that is not a str is refused: see `check_keys`)."""
    if value is None:
        return "null"  # what most jobs return: skip the encoder
    try:
        text = _to_json(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidJobType(field, f"must be JSON-serialisable: {exc}") from None
    except Exception as exc:  # a container whose own methods raise while it is encoded
        raise InvalidJobType(field, f"must be JSON-serialisable: encoding it raised {type(exc).__name__}") from None
    if _check_keys and ":" in text:  # a non-empty dict somewhere (compact JSON writes `"key":value`), or a str with a colon
        check_keys(value, field)
    ascii = text.isascii()  # (a flag read: for most payloads, all there is to check)
    if not ascii:
        check_text(field, text)
    # The cap is in bytes of UTF-8, as stored: a character is up to 4 of them.
    if max_bytes is not None and len(text) > (max_bytes if ascii else max_bytes // 4):
        size = len(text) if ascii else len(text.encode("utf-8"))
        if size > max_bytes:
            raise InvalidJob(field, f"encodes to {size} bytes, over the {max_bytes}-byte payload limit")
    return text


def check_keys(value: Any, field: str) -> None:
    """Raise `InvalidJobType` naming `field` if a dict anywhere in `value` has a key that is
    not a str. JSON keys are strings: json writes 1, 1.5, True and None as "1", "1.5",
    "true" and "null", so such a dict would come back rewritten, and `{1: 'a', '1': 'b'}`
    with an entry lost."""
    key = _non_str_key(value)
    if key is not _ALL_STR:
        raise InvalidJobType(field, f"must be JSON-serialisable with str dict keys, got the "
                                    f"{type(key).__name__} key {key!r} (JSON would store it as a str)")


_ALL_STR = object()


def _non_str_key(value: Any) -> Any:
    """The first dict key in `value` that is not a str, else `_ALL_STR`. (C-level checks
    first, `str.join` and a superset test of the types held: a flat dict of str keys and
    scalar values costs about half a microsecond.)"""
    if value.__class__ is dict:  # the common cases first: a flat dict, a flat list
        try:
            "".join(value)  # a TypeError if a key is not a str (a str subclass is one)
        except TypeError:
            return next(k for k in value if not isinstance(k, str))
        if _LEAVES.issuperset(map(type, value.values())):
            return _ALL_STR
    elif (value.__class__ is list or value.__class__ is tuple) and _LEAVES.issuperset(map(type, value)):
        return _ALL_STR
    elif not isinstance(value, _CONTAINERS):
        return _ALL_STR
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            try:
                "".join(item)  # a TypeError if a key is not a str (a str subclass is one)
            except TypeError:
                return next(k for k in item if not isinstance(k, str))
            inners: Any = item.values()
        else:
            inners = item
        if _LEAVES.issuperset(map(type, inners)):
            continue  # only scalars in it
        for inner in inners:
            if isinstance(inner, _CONTAINERS):
                stack.append(inner)
    return _ALL_STR


_LEAVES = frozenset({str, int, float, bool, type(None)})  # exact types: a subclass is looked at
_CONTAINERS = (dict, list, tuple)  # what json encodes as an object or an array


# Free text from a job is kept up to these many characters: the middle of a longer one is cut.
ERROR_TEXT_LIMIT = 65_536      # an error message (and a log line, a progress message)
TRACEBACK_LIMIT = 262_144      # a traceback


def storable_text(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """Free text from a job (an error, a traceback, a log line, a progress message) as
    every store holds it: a lone surrogate, which UTF-8 cannot encode (a file name from
    `os.listdir`, say), becomes its backslash escape, and past `limit` characters the
    middle is cut, the head and the tail kept. An error is the job's, not a mistake to
    refuse: recording it must not fail (it stalled every outcome recorded with it)."""
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        # At most `limit` characters with the marker, so that text cut once is never cut
        # again (an isolated job's log line is cut in its child, then stored by the parent:
        # the second cut had cut the first marker out, and said "[33 characters cut]").
        longest_marker = len(f"\n... [{len(text)} characters cut] ...\n")
        keep = max(limit - longest_marker, 0) // 2
        text = f"{text[:keep]}\n... [{len(text) - 2 * keep} characters cut] ...\n{text[len(text) - keep:]}"
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str) -> bool:
    """False if `text` holds a lone surrogate (see `check_text`): no job stores such text."""
    return _SURROGATE.search(text) is None


def could_be_id(text: str) -> bool:
    """False if no job's id or tag can be `text`: it holds a lone surrogate or a NUL
    (refused in both: see `models._check_id_text`)."""
    return "\x00" not in text and _SURROGATE.search(text) is None


def check_text(field: str, text: str) -> None:
    """Raise `InvalidJobType` naming `field` if `text` holds a lone surrogate (a str Python
    allows and UTF-8 cannot encode: no database would take it, and a result holding one
    stalled every outcome recorded with it)."""
    found = _SURROGATE.search(text)
    if found is not None:
        raise InvalidJobType(field, f"holds a lone surrogate {found.group()!r}, which UTF-8 cannot store")


def encode_payload(args: tuple[Any, ...], kwargs: dict[str, Any], max_bytes: int | None) -> str:
    """Encode a job's arguments as one JSON document `[args, kwargs]`; an argument that
    cannot be encoded raises naming it (`args[1]`, `kwargs['when']`)."""
    if not args and not kwargs:
        return "[[],{}]"
    try:
        text = encode([list(args), kwargs], field="args", max_bytes=max_bytes, _check_keys=False)
    except InvalidJobType:  # find the argument to name (each encoded only on this path)
        for index, arg in enumerate(args):
            _check_encodable(arg, f"args[{index}]")
        for key, arg in kwargs.items():
            _check_encodable(arg, f"kwargs[{key!r}]")
        raise
    if ":" in text:  # a non-empty dict somewhere: each argument's keys checked, to name it
        for index, arg in enumerate(args):
            if arg.__class__ not in _LEAVES and _non_str_key(arg) is not _ALL_STR:
                check_keys(arg, f"args[{index}]")
        for key, arg in kwargs.items():
            if arg.__class__ not in _LEAVES and _non_str_key(arg) is not _ALL_STR:
                check_keys(arg, f"kwargs[{key!r}]")
    return text


def _check_encodable(value: Any, field: str) -> None:
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    encode(value, field=field)


def decode_payload(text: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Decode what `encode_payload` wrote; raises `ValueError` for a corrupt payload."""
    # raw_decode: json.loads without its checks, for the compact text encode_payload
    # writes; anything else (whitespace around, extra data, bad JSON) goes to json.loads,
    # which accepts or refuses it as it always did.
    try:
        data, end = _raw_decode(text)
    except (ValueError, TypeError, RecursionError):
        end = -1
    if end != len(text):
        data = loads(text, "payload")
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], list)
            and isinstance(data[1], dict)):
        raise ValueError(f"payload is not [args, kwargs]: {text[:80]!r}")
    return tuple(data[0]), data[1]


def decode(text: str | None, column: str = "result") -> Any:
    """Decode a JSON column (`None` stays `None`), `column` named by the `ValueError` for
    text that is not JSON (see `loads`). As in `decode_payload`, compact text (what
    `encode` writes) skips `json.loads`'s checks; anything else goes through them.
    `wait` decodes every result it answers from memory, so this is on its path."""
    if text is None:
        return None
    try:
        data, end = _raw_decode(text)
    except (ValueError, TypeError, RecursionError):
        end = -1
    return data if end == len(text) else loads(text, column)


def loads(text: Any, column: str) -> Any:
    """`json.loads` of `text`, read from the stored column `column`; a `ValueError` naming
    that column for a value that is not JSON text, or nests deeper than this thread's
    stack decodes (a corrupt row's job fails as corrupt, the message saying where)."""
    try:
        return _decode(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{column} holds text that is not JSON ({exc})") from None
    except TypeError:
        raise ValueError(f"{column} holds {reprlib.repr(text)}, not JSON text") from None
    except RecursionError:
        raise ValueError(f"{column} holds JSON nested deeper than this thread's stack decodes") from None
