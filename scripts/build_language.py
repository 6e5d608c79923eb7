"""Build tunelab/data/language.jsonl.gz: the names of countries in 50 languages, labelled with their language.

A task of many labels (50) from the Unicode CLDR as the `babel` package ships it (CLDR data: Unicode License v3):
each row is one territory's name as one language writes it (`Deutschland`, `Allemagne`) and that language's English
name (`German`, `French`), a label of one to four tokens. Only two-letter (ISO country) territories count; a name
that two of the languages write the same way (`Japan` in German and Luxembourgish; English is not among the languages: most of its names are shared) is dropped, so that every text has one
right answer. Shipped as a derived file so that the task is the same whichever babel (and CLDR) release is
installed. Rebuild it with

    python scripts/build_language.py
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import babel
from babel import Locale

# 50 languages in 14 scripts: some told apart by their script alone, most only by their spelling (Latin: 33)
LANGUAGES = ("mt fr de es it pt nl sv da nb fi pl cs sk sl hr hu ro tr et lv lt id ms vi sw af ca eu gl is ga cy sq "
             "uz az lb zu ru uk bg sr el ar fa he hi ja zh ko").split()
OUT = Path(__file__).resolve().parents[1] / "tunelab" / "data" / "language.jsonl.gz"


def main() -> None:
    names = {code: {territory: name for territory, name in Locale.parse(code).territories.items()
                    if len(territory) == 2 and territory.isalpha()} for code in LANGUAGES}
    written = Counter(name.casefold() for per_language in names.values() for name in set(per_language.values()))
    rows = [{"text": name, "label": Locale("en").languages[code], "territory": territory}
            for code in LANGUAGES for territory, name in sorted(names[code].items()) if written[name.casefold()] == 1]
    with gzip.open(OUT, "wt", encoding="utf-8", compresslevel=9) as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    per_label = Counter(row["label"] for row in rows)
    print(f"{len(rows)} names, {len(per_label)} languages (fewest {min(per_label.values())}), babel "
          f"{babel.__version__} -> {OUT}")


if __name__ == "__main__":
    main()
