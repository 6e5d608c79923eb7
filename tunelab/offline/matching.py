"""Finding stored terms in live text: one Aho-Corasick automaton (pyahocorasick) over every term, rebuilt when its
store changes. Used by `/match` over a term store (generated names) and over a prediction store (its inputs).

Matching is on Unicode NFC text, case-folded unless told otherwise. A term in a script written with spaces between
words must sit at word boundaries ("Peru" is not found in "Perugia"); a term in a script written without them (Han,
kana, Thai, ...) is found as a substring.
"""

from __future__ import annotations

import unicodedata
from typing import Callable, Iterable

import ahocorasick

from tunelab.offline.store import FreshView

# Scripts written without spaces between words: a term in them matches anywhere (Unicode blocks, inclusive).
NO_SPACE_BLOCKS = ((0x0E00, 0x0EFF), (0x0F00, 0x0FFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x3040, 0x30FF),
                   (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))
MATCHER_CHECK_S = 1.0  # how often a serving matcher looks for terms added to its store since it was built


def match_key(text: str) -> str:
    """What matching compares: NFC, then case-folded (so "STRASSE" finds "Straße")."""
    return unicodedata.normalize("NFC", text).casefold()


def written_without_spaces(term: str) -> bool:
    return any(low <= ord(char) <= high for char in term for low, high in NO_SPACE_BLOCKS)


def build_automaton(entries: Iterable[tuple[str, dict]], *, fold: bool = True) -> ahocorasick.Automaton:
    """One automaton over every (term, payload) entry's key (match_key, or NFC alone without `fold`); a key shared
    by several entries lists all their payloads."""
    by_key: dict[str, list[dict]] = {}
    for text, payload in entries:
        key = match_key(text) if fold else unicodedata.normalize("NFC", text)
        if key:
            by_key.setdefault(key, []).append(payload)
    automaton = ahocorasick.Automaton()
    for key, found in by_key.items():
        automaton.add_word(key, (key, not written_without_spaces(key), found))
    if len(automaton) > 0:
        automaton.make_automaton()
    return automaton


def at_word_boundaries(text: str, start: int, end: int) -> bool:
    return (start == 0 or not text[start - 1].isalnum()) and (end == len(text) or not text[end].isalnum())


def find_terms(automaton: ahocorasick.Automaton, text: str, limit: int, *, fold: bool = True,
               keep: Callable[[dict], bool] | None = None) -> tuple[list[dict], bool]:
    """Up to `limit` matches (payload, span, matched text) of the automaton's terms in `text`, and whether there
    were more; `keep(payload)` False leaves a term out (a confidence floor). Spans index the NFC form of `text`
    (the same string for the NFC text most clients send)."""
    text = unicodedata.normalize("NFC", text)
    folded = text.casefold() if fold else text
    origin = None
    if len(folded) != len(text):  # a character folds to several ("ß" -> "ss"): map folded offsets back
        origin = [i for i, char in enumerate(text) for _ in char.casefold()] + [len(text)]
    matches = []
    if len(automaton) == 0:
        return matches, False
    for end, (key, needs_boundaries, found) in automaton.iter(folded):
        start, stop = end - len(key) + 1, end + 1
        if origin is not None:
            start, stop = origin[start], origin[stop - 1] + 1
        if needs_boundaries and not at_word_boundaries(text, start, stop):
            continue
        for entry in found:
            if keep is not None and not keep(entry):
                continue
            if len(matches) == limit:
                return matches, True
            matches.append({**entry, "start": start, "end": stop, "matched": text[start:stop]})
    return matches, False


class Matcher:
    """The serving side: the automaton over a store's entries, rebuilt when the store has changed, and `find`."""

    def __init__(self, store, entries: Callable[[], Iterable[tuple[str, dict]]], *, fold: bool = True):
        self.fold = fold
        self.view = FreshView(store, lambda: build_automaton(entries(), fold=fold), MATCHER_CHECK_S)

    @property
    def automaton(self) -> ahocorasick.Automaton:
        return self.view.current()

    def find(self, text: str, limit: int, keep: Callable[[dict], bool] | None = None) -> tuple[list[dict], bool]:
        return find_terms(self.view.current(), text, limit, fold=self.fold, keep=keep)
