"""What term generation reads: concepts (an id and seed names), few-shot examples, training pairs and a reference.

The built-in `countries` measures generation on real public data: the Unicode CLDR names of territories (shipped in
babel), concept = a country, seed = its English name, reference = its names in each language. `countries` is a fixed
half of the countries (evaluation), `countries-train` the other half (what a generator may be tuned on).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import InputError
from tunelab.generation.config import language_codes
from tunelab.offline.terms import match_key, normalise_term
from tunelab.tasks import read_rows

COUNTRIES = "countries"  # the built-in concepts and reference (its held-out half; `countries-train` the other)
# The default shots: real CLDR names of three countries, which the built-in evaluation leaves out.
SHOT_COUNTRIES = (("DE", "fr"), ("JP", "es"), ("BR", "de"))
NOT_COUNTRIES = {"EU", "EZ", "UN", "ZZ", "QO", "XA", "XB"}  # CLDR territory codes that are groupings or pseudo
# Other CLDR concept types, each whole (built-in concepts and reference): types a generator prompted or tuned on
# countries never saw. Each reads a babel Locale's names of that type ({code: name}); only ISO-shaped codes count.
CLDR_TYPES = {
    "languages": lambda locale: {c: n for c, n in locale.languages.items() if len(c) == 2 and c.isalpha()},
    "currencies": lambda locale: {c: n for c, n in locale.currencies.items()
                                  if len(c) == 3 and c.isalpha() and c.isupper()},
    "scripts": lambda locale: {c: n for c, n in locale.scripts.items() if len(c) == 4 and c.isalpha() and c != "Zzzz"},
    # types to tune a generator on besides countries (bench/expand.py evaluates on the three above, never on these)
    "regions": lambda locale: {c: n for c, n in locale.territories.items() if c.isdigit()},  # "Western Europe"
    "months": lambda locale: {str(k): n for k, n in locale.months["format"]["wide"].items()},
    "days": lambda locale: {str(k): n for k, n in locale.days["format"]["wide"].items()},
    "units": lambda locale: _unit_names(locale),  # "square kilometers": names built of parts, as currencies' are
}


def _unit_names(locale) -> dict[str, str]:
    """CLDR's long unit names in `locale` ({"area-square-kilometer": "Quadratkilometer"}), where it has one."""
    from babel.units import get_unit_name

    names = {code: get_unit_name(code, length="long", locale=locale) for code in locale.unit_display_names}
    return {code: name for code, name in names.items() if name}


@dataclass(frozen=True)
class Concept:
    id: str
    names: tuple[str, ...]  # the seed names (the first one is the prompt's)


@dataclass(frozen=True)
class Shot:
    source: str
    language: str
    name: str


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def language_name(code: str) -> str:
    from babel import Locale

    return Locale.parse(code).get_display_name("en")


def read_concepts(path: str | Path) -> list[Concept]:
    """Concepts from JSONL, one `{"id": ..., "names": [...]}` a line; or the built-in `countries`.

    Raises:
        InputError: a missing or empty id or names field, or an id used twice (file and line named).
    """
    if str(path) in (COUNTRIES, f"{COUNTRIES}-train"):
        return country_concepts(str(path))
    if str(path) in CLDR_TYPES:
        return cldr_concepts(str(path))
    concepts, seen = [], {}
    for line, row in read_rows(path, ("id", "--concepts"), ("names", "--concepts")):
        concept_id, names = row.get("id"), row.get("names")
        if not isinstance(concept_id, str) or not concept_id.strip():
            raise InputError("must be a non-empty string", path=path, line=line, field="id")
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise InputError("must be a non-empty list of names", path=path, line=line, field="names")
        if concept_id in seen:
            raise InputError(f"duplicate concept id {concept_id!r} (first on line {seen[concept_id]})", path=path,
                             line=line, field="id")
        seen[concept_id] = line
        concepts.append(Concept(concept_id, tuple(n.strip() for n in names)))
    if not concepts:
        raise InputError("holds no concepts", path=path)
    return concepts


def read_shots(path: str | Path | None) -> list[Shot]:
    """Few-shot examples from JSONL, one `{"source": "Germany", "language": "fr", "name": "Allemagne"}` a line;
    without a file, three real CLDR country names."""
    if path is None:
        from babel import Locale

        english = Locale("en").territories
        return [Shot(english[code], lang, Locale.parse(lang).territories[code]) for code, lang in SHOT_COUNTRIES]
    shots = []
    for line, row in read_rows(path, ("source", "--examples"), ("language", "--examples"), ("name", "--examples")):
        for field in ("source", "language", "name"):
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise InputError("must be a non-empty string", path=path, line=line, field=field)
        shots.append(Shot(row["source"].strip(), language_codes(row["language"])[0], row["name"].strip()))
    return shots


def read_reference(path: str | Path, languages: tuple[str, ...]) -> dict[tuple[str, str], set[str]]:
    """(concept, language) -> the match keys of its reference names; from JSONL lines
    `{"id": ..., "language": ..., "names": [...]}`, or the built-in `countries` (CLDR)."""
    if str(path) in (COUNTRIES, f"{COUNTRIES}-train"):
        return country_reference([c.id for c in country_concepts(str(path))], languages)
    if str(path) in CLDR_TYPES:
        return cldr_reference(str(path), languages)
    reference: dict[tuple[str, str], set[str]] = {}
    for line, row in read_rows(path, ("id", "--evaluate"), ("language", "--evaluate"), ("names", "--evaluate")):
        names = row.get("names")
        if not isinstance(row.get("id"), str) or not isinstance(row.get("language"), str):
            raise InputError("needs string fields id and language", path=path, line=line, field="id")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError("must be a list of names", path=path, line=line, field="names")
        key = (row["id"], row["language"].replace("-", "_"))
        reference.setdefault(key, set()).update(match_key(normalise_term(n)) for n in names)
    return reference


def country_concepts(which: str = COUNTRIES) -> list[Concept]:
    """The CLDR countries (two-letter territory codes, groupings left out, the shots' countries left out), split
    in two halves by a fixed seed: `countries` to evaluate, `countries-train` to tune a generator on."""
    from babel import Locale

    english = Locale("en").territories
    shot_codes = {code for code, _ in SHOT_COUNTRIES}
    codes = sorted(c for c in english if len(c) == 2 and c.isalpha() and c not in NOT_COUNTRIES | shot_codes)
    random.Random(0).shuffle(codes)
    half = codes[: len(codes) // 2] if which == COUNTRIES else codes[len(codes) // 2 :]
    return [Concept(code, (english[code],)) for code in sorted(half)]


def country_pairs(which: str, languages: tuple[str, ...]) -> list[Shot]:
    """(English name, language, CLDR name) for the countries of `which` in each language: a generator's training
    pairs (from `countries-train`, which the evaluation leaves alone)."""
    from babel import Locale

    concepts = country_concepts(which)
    pairs = []
    for language in languages:
        names = Locale.parse(language).territories
        pairs += [Shot(c.names[0], language, names[c.id]) for c in concepts if c.id in names]
    return pairs


def read_pairs(path: str | Path, languages: tuple[str, ...]) -> list[Shot]:
    """Training pairs: a JSONL file in the --examples format, or built-in concept types, one or a comma list
    (`countries-train`, the CLDR types: e.g. `countries-train,regions,months,days`).

    Raises:
        InputError: a name in a comma list that is no built-in type (the file reader names a missing file).
    """
    names = [name.strip() for name in str(path).split(",") if name.strip()]
    builtin = {COUNTRIES, f"{COUNTRIES}-train", *CLDR_TYPES}
    if not all(name in builtin for name in names):
        if len(names) > 1:
            unknown = ", ".join(name for name in names if name not in builtin)
            raise InputError(f"not a built-in concept type: {unknown} (built-in: {', '.join(sorted(builtin))})",
                             path=path)
        return read_shots(path)
    pairs = []
    for name in names:
        pairs += country_pairs(name, languages) if name in (COUNTRIES, f"{COUNTRIES}-train") else cldr_pairs(
            name, languages)
    return pairs


def country_reference(codes: list[str], languages: tuple[str, ...]) -> dict[tuple[str, str], set[str]]:
    from babel import Locale

    reference = {}
    for language in languages:
        names = Locale.parse(language).territories
        for code in codes:
            if code in names:
                reference[(code, language)] = {match_key(normalise_term(names[code]))}
    return reference


def cldr_concepts(kind: str) -> list[Concept]:
    """Every code of a CLDR concept type (CLDR_TYPES) with its English name."""
    from babel import Locale

    english = CLDR_TYPES[kind](Locale("en"))
    return [Concept(code, (english[code],)) for code in sorted(english)]


def cldr_pairs(kind: str, languages: tuple[str, ...]) -> list[Shot]:
    """(English name, language, CLDR name) of every concept of a CLDR type in each language: training pairs."""
    from babel import Locale

    english = CLDR_TYPES[kind](Locale("en"))
    pairs = []
    for language in languages:
        names = CLDR_TYPES[kind](Locale.parse(language))
        pairs += [Shot(english[code], language, names[code]) for code in sorted(english) if code in names]
    return pairs


def cldr_reference(kind: str, languages: tuple[str, ...]) -> dict[tuple[str, str], set[str]]:
    from babel import Locale

    reference = {}
    for language in languages:
        names = CLDR_TYPES[kind](Locale.parse(language))
        reference.update({(code, language): {match_key(normalise_term(name))} for code, name in names.items()})
    return reference
