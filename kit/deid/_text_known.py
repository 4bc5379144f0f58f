"""The known-identifier layer of :mod:`kit.deid.text`: one token automaton, linear time (pure).

Text is cut into tokens (runs of letters, runs of digits; ``MRN1001`` is two tokens), each
normalised (case-folded, accents stripped, digit runs without leading zeros). Every known
identifier is expanded into the token sequences it can be written as (name orders and
initials, date orders and month names, address lines) and stored in one trie over tokens;
phone numbers and digit-only identifiers also go in a table of digit strings, matched on
runs of digit tokens whatever their grouping (``+41 21 555 0101``, ``021 555 01 01``,
``0215550101``). Matching walks the trie from each token, longest match first; the walk is
bounded by the longest key (a constant of the identifier set), so the cost is linear in the
text. Between the tokens of one identifier only short runs of separators are allowed.

Written by hand: no library matches token sequences with per-token normalisation and
separator rules; a regex union of every variant would backtrack per alternative.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["KnownMatcher", "Token", "digit_key", "norm", "tokenize"]

_TOKEN = re.compile(r"[^\W\d_]+|\d+")
#: Characters allowed between two tokens of one identifier ("Doe, Jane", "14.03.1958", "j.doe@x.ch").
_GAP = frozenset(" \t\r\n,.-/'’()@_:")
_MAX_GAP = 3
_PHONE_GAP = frozenset(" -./()")
_MAX_DIGITS = 20
_END = ""  # trie key of a terminal (never a token)


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    """A token of the text: offsets, normalised key, and whether it is a digit run."""

    start: int
    end: int
    key: str
    digits: bool


def norm(word: str) -> str:
    """Normalised form of one token: case-folded, accents stripped, digits without leading zeros."""
    if word.isdecimal():
        if not word.isascii():
            word = "".join(str(unicodedata.decimal(c)) for c in word)
        return word.lstrip("0") or "0"
    folded = unicodedata.normalize("NFKD", word.casefold())
    return "".join(c for c in folded if not unicodedata.combining(c))


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text`` (letter runs and digit runs), in order."""
    return [Token(m.start(), m.end(), norm(m.group()), m.group().isdecimal()) for m in _TOKEN.finditer(text)]


def token_keys(value: str) -> tuple[str, ...]:
    """The normalised token sequence of an identifier value."""
    return tuple(t.key for t in tokenize(value))


def digit_key(value: str) -> str:
    """The digits of ``value`` (ASCII only), for digit-run matching."""
    return "".join(c for c in value if c.isascii() and c.isdigit())


class KnownMatcher:
    """Longest-match lookup of known token sequences and digit strings in text.

    Parameters
    ----------
    phrases : iterable of (tuple of str, str)
        Normalised token sequences (see :func:`token_keys`) and the kind each stands for.
    digit_strings : iterable of (str, str)
        Digit strings (see :func:`digit_key`) and their kind, matched on runs of digit
        tokens separated by phone punctuation.
    """

    def __init__(self, phrases: Iterable[tuple[tuple[str, ...], str]],
                 digit_strings: Iterable[tuple[str, str]] = ()) -> None:
        self._trie: dict[str, Any] = {}
        self.depth = 0
        for keys, kind in phrases:
            if not keys:
                continue
            node = self._trie
            for k in keys:
                node = node.setdefault(k, {})
            node.setdefault(_END, kind)  # the first kind given for a sequence wins
            self.depth = max(self.depth, len(keys))
        self._digits: dict[str, str] = {}
        for digits, kind in digit_strings:
            if 0 < len(digits) <= _MAX_DIGITS:
                self._digits.setdefault(digits, kind)

    def __len__(self) -> int:
        return self._count(self._trie) + len(self._digits)

    def _count(self, node: dict[str, Any]) -> int:
        return sum(1 if k == _END else self._count(v) for k, v in node.items())

    @staticmethod
    def _joinable(text: str, left: Token, right: Token, allowed: frozenset[str]) -> bool:
        gap = right.start - left.end
        return gap <= _MAX_GAP and all(c in allowed for c in text[left.end:right.start])

    def _trie_match(self, text: str, tokens: list[Token], i: int) -> tuple[int, str] | None:
        node = self._trie.get(tokens[i].key)
        best: tuple[int, str] | None = None
        j = i
        while node is not None:
            if _END in node:
                best = (j, node[_END])
            j += 1
            if j >= len(tokens) or not self._joinable(text, tokens[j - 1], tokens[j], _GAP):
                break
            node = node.get(tokens[j].key)
        return best

    def _digit_match(self, text: str, tokens: list[Token], i: int) -> tuple[int, str] | None:
        if not self._digits or not tokens[i].digits:
            return None
        best: tuple[int, str] | None = None
        acc = ""
        j = i
        while True:
            acc += text[tokens[j].start:tokens[j].end]
            if len(acc) > _MAX_DIGITS:
                break
            kind = self._digits.get(acc)
            if kind is not None:
                best = (j, kind)
            j += 1
            if (j >= len(tokens) or not tokens[j].digits
                    or not self._joinable(text, tokens[j - 1], tokens[j], _PHONE_GAP)):
                break
        return best

    def find(self, text: str) -> Iterator[tuple[int, int, str]]:
        """Non-overlapping ``(start, end, kind)`` of known identifiers in ``text``, left to right.

        A phone match also takes a ``+`` right before its first digit.
        """
        tokens = tokenize(text)
        i = 0
        while i < len(tokens):
            a = self._trie_match(text, tokens, i)
            b = self._digit_match(text, tokens, i)
            hit = a if b is None or (a is not None and a[0] >= b[0]) else b
            if hit is None:
                i += 1
                continue
            last, kind = hit
            start = tokens[i].start
            if hit is b and start > 0 and text[start - 1] == "+":
                start -= 1
            end = tokens[last].end
            if kind == "NAME" and len(tokens[last].key) == 1 and text[end:end + 1] == ".":
                end += 1  # an initial's full stop belongs to the name
            yield start, end, kind
            i = last + 1
