"""`bytes_left`: about how much memory a value's objects take, told at a cost bounded by
the budget it is checked against, never by the value's size. For caches that must not
keep what is large and must not pay much to tell. It follows only what stored job fields
are made of (str, numbers, dict, list, tuple, set, frozenset); it encodes nothing, and
calls no `sys.getsizeof` (about 0.15 µs a call: too dear for every job completed).
"""

from __future__ import annotations

from typing import Any, Optional

# About what CPython (3.10-3.13, 64-bit) takes for each: an ASCII str 49 bytes and its
# length (one of other characters, up to WIDE bytes each: counted so), a number 24-32
# (an int more, 1 byte for 8 bits: one of 4,300 digits, as JSON allows, takes 1.8 KB),
# a dict 64-184 and some 32 an entry, a list or tuple 40-56 and 8 an item, a set 216 and
# some 64 an item (measured with sys.getsizeof).
STR = 50
SCALAR = 32
WIDE = 4
DICT, DICT_ENTRY = 100, 32
ARRAY, ARRAY_ITEM = 56, 8
SET, SET_ITEM = 216, 64

_STR, _DICT, _ARRAY, _SET = range(4)
# Each container's and str's kind by its exact class: one dict lookup (a subclass is
# found by isinstance, in `_kind`).
_KINDS = {str: _STR, dict: _DICT, list: _ARRAY, tuple: _ARRAY, set: _SET, frozenset: _SET}
_SCALARS = frozenset({int, float, bool, type(None)})
_STRS = frozenset({str})


def bytes_left(value: Any, budget: int) -> int:
    """`budget` less about the bytes `value` takes (see the constants above), with what
    its containers hold, all the way down (an object held twice counts twice). Below 0 if
    more than `budget`, and then how far below says nothing: the count stops there.

    The cost is bounded by `budget`: a container is counted with all its slots before its
    items are looked at, and each item takes at least 8 bytes, so no more than
    `budget / 8` items of one are (in two passes at most); each level of nesting takes 40
    bytes or more, and one deeper than Python's recursion allows counts as too large. A
    flat dict of a few entries costs about 1 µs on a busy 2-vCPU host (encoding it as
    JSON, 1.5 µs)."""
    try:
        return _left(value, budget)
    except RecursionError:
        return -1


def _left(value: Any, left: int) -> int:
    """See `bytes_left`."""
    kind = _KINDS.get(value.__class__)
    if kind is None:
        kind = _kind(value)
    if kind == _STR:
        return left - STR - (len(value) if value.isascii() else WIDE * len(value))
    if kind == _DICT:
        left -= DICT + (DICT_ENTRY + STR) * len(value)  # with its keys' str overhead
        if left < 0:
            return left
        try:
            left -= _text(value)  # the keys' text (str: JSON's are)
        except TypeError:
            pass  # a key that is not text: counted as a short str
        inner: Any = value.values()
    elif kind == _ARRAY:
        left -= ARRAY + ARRAY_ITEM * len(value)
        inner = value
    elif kind == _SET:
        left -= SET + SET_ITEM * len(value)
        inner = value
    elif value.__class__ is int:
        return left - SCALAR - (value.bit_length() >> 3)
    else:
        return left - SCALAR
    if left < 0:
        return left
    if _STRS.issuperset(map(type, inner)):  # (tags, dependencies, most metadata: in C)
        return left - STR * len(value) - _text(inner)
    for item in inner:
        cls = item.__class__
        if cls is str:
            left -= STR + (len(item) if item.isascii() else WIDE * len(item))
        elif cls is int:  # (JSON's may have 4,300 digits: 1.8 KB)
            left -= SCALAR + (item.bit_length() >> 3)
        elif cls in _SCALARS:
            left -= SCALAR
        else:
            left = _left(item, left)
        if left < 0:
            break
    return left


def _text(strings: Any) -> int:
    """About the bytes the characters of `strings` (str each; TypeError if not) take:
    one a character for ASCII text, else up to WIDE (a str of any other character holds
    them 1, 2 or 4 bytes wide: counted as the widest)."""
    chars = sum(map(len, strings))
    return chars if all(map(str.isascii, strings)) else WIDE * chars


def _kind(value: Any) -> Optional[int]:
    """The kind of `value`, of a class not in `_KINDS` (None: a scalar)."""
    for kind, classes in ((_STR, str), (_DICT, dict), (_ARRAY, (list, tuple)), (_SET, (set, frozenset))):
        if isinstance(value, classes):
            return kind
    return None
