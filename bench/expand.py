"""Offline term generation end to end: generation throughput, prompted vs LoRA-tuned recall, /match latency.

1. Throughput: the same prompts through generate_candidates() in batches of --batch vs one prompt at a time.
2. Quality on the built-in `countries` evaluation (CLDR names): the prompted generator (3 real shots) vs a generator
   LoRA-tuned on the `countries-train` half (which the evaluation leaves alone), same concepts and languages,
   recall@N and precision per language.
4. Precision on concept types the generator never saw (issue #28): the prompted bundled model (country shots) on
   CLDR scripts (the validation type: the confidence floor is chosen there, as the lowest floor whose precision is
   at least --target-precision) and on currencies and languages (held out: measured at that floor), in
   --precision-languages; beam search (confidence = mean token probability) and sampling with self-consistency
   (confidence = the share of --samples candidates that agree); the precision/recall curve over the floor; then
   the same with a generator LoRA-tuned on --tune-types (countries, regions, months, days, units: none of
   the three);
   and beam search with back-translation (a term kept only when the model names its concept in English again).
3. /match: find_terms over a 100k-term list built from CLDR names (territories and languages in every locale)
   against a naive loop that tests every term, per text of a few hundred characters; server time, in process.

    python bench/expand.py [--concepts 40] [--languages de,fr,es,...] [--per-language 3] [--epochs 2]
                           [--skip throughput,quality,match] [--tune-types countries-train,regions,months,days,units]
                           [--decodings beam,sample,back-translated] [--skip-prompted]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from harness import run_tunelab
from rich.console import Console
from rich.table import Table

from tunelab.generation.concepts import read_concepts, read_shots
from tunelab.generation.config import ExpandConfig
from tunelab.generation.prompts import generate_candidates, render_prompt, shared_prefix
from tunelab.models import load_model
from tunelab.offline.matching import at_word_boundaries, build_automaton, find_terms, match_key, written_without_spaces
from tunelab.offline.terms import Term, term_entries

LANGUAGES = "de,fr,es,it,pt,nl,pl,ru,ja,zh"
DEFAULT_TUNE_TYPES = "countries-train,regions,months,days"
REPEATS = 3  # each throughput arm runs this many times; the table shows the median (single runs varied by 20%)


def throughput(prompts: int, batch: int) -> list[tuple]:
    model = load_model("smollm2")
    concepts = read_concepts("countries")[:prompts]
    shots = read_shots(None)
    texts = [render_prompt(model.tokenizer, shots, c.names[0], "de")[0] for c in concepts]
    prefix = shared_prefix(model.tokenizer, shots)
    rows = []
    for per_language in (1, 3):
        config = ExpandConfig(languages=("de",), per_language=per_language)
        timings = {}
        for name, size, shared in (("one", 1, ""), ("batched", batch, ""), ("cached", batch, prefix)):
            generate_candidates(model, texts[:2], config, chat=True, batch_size=size, prefix=shared)  # warm-up
            rates = []
            for _ in range(REPEATS):
                started = time.perf_counter()
                generate_candidates(model, texts, config, chat=True, batch_size=size, prefix=shared)
                rates.append(len(texts) * per_language / (time.perf_counter() - started))
            timings[name] = statistics.median(rates)
        rows.append((f"{'greedy' if per_language == 1 else 'beam'}, {per_language} per prompt",
                     f"{timings['one']:.2f}", f"{timings['batched']:.2f}", f"{timings['cached']:.2f}",
                     f"{timings['cached'] / timings['one']:.1f}x"))
    return rows


def quality(args) -> list[dict]:
    out = args.out
    reports = {}
    common = ["--concepts", "countries", "--limit", str(args.concepts), "--languages", args.languages,
              "--per-language", str(args.per_language), "--evaluate", "countries"]
    reports["prompted (3 shots)"] = run_tunelab("expand", *common, "--store", str(out / "prompted.sqlite"))
    if not (out / "generator" / "tunelab-generator.json").is_file():
        run_tunelab("expand-tune", "--pairs", "countries-train", "--languages", args.languages, "--epochs",
                    str(args.epochs), "--out", str(out / "generator"), "--overwrite")
    facts = json.loads((out / "generator" / "tunelab-generator.json").read_text())
    reports[f"LoRA-tuned ({facts['pairs']} pairs, {facts['train_seconds']:.0f} s)"] = run_tunelab(
        "expand", *common, "--model", str(out / "generator"), "--store", str(out / "tuned.sqlite"))
    return reports


def tuned_generator(args) -> tuple[Path, dict]:
    """The generator LoRA-tuned on --tune-types (never the validation or held-out types), in the precision languages."""
    folder = args.out / ("generator-types" if args.tune_types == DEFAULT_TUNE_TYPES
                         else "generator-" + args.tune_types.replace(",", "+"))
    if not (folder / "tunelab-generator.json").is_file():
        run_tunelab("expand-tune", "--pairs", args.tune_types, "--languages", args.precision_languages, "--epochs",
                    str(args.epochs), "--out", str(folder), "--overwrite")
    return folder, json.loads((folder / "tunelab-generator.json").read_text())


def precision_curves(args) -> dict:
    """Each (generator, decoding, concept type): the evaluation's curve; the floor chosen on the validation type."""
    found = {}
    decodings = {"beam": ["--decoding", "beam", "--per-language", str(args.per_language)],
                 "sample": ["--decoding", "sample", "--per-language", str(args.samples)],
                 "beam, back-translated": ["--decoding", "beam", "--per-language", str(args.per_language),
                                           "--back-translate"]}
    short = {"beam": "beam", "sample": "sample", "beam, back-translated": "back-translated"}
    decodings = {name: flags for name, flags in decodings.items() if short[name] in args.decodings.split(",")}
    generators = {} if args.skip_prompted else {"prompted": []}
    if args.tune_types:
        folder, facts = tuned_generator(args)
        generators[f"tuned on {args.tune_types} ({facts['pairs']} pairs, {facts['train_seconds']:.0f} s)"] = [
            "--model", str(folder)]
    for generator, model_flags in generators.items():
        for decoding, flags in decodings.items():
            for kind in ("scripts", "currencies", "languages"):
                store = args.out / f"precision-{len(found)}.sqlite"
                store.unlink(missing_ok=True)
                found[(generator, decoding, kind)] = run_tunelab(
                    "expand", "--concepts", kind, "--limit", str(args.type_concepts), "--languages",
                    args.precision_languages, *flags, *model_flags, "--evaluate", kind, "--store", str(store))
    return found


def precision_tables(found: dict, args, console) -> None:
    for generator, decoding in dict.fromkeys((g, d) for g, d, _ in found):
        validation = found[(generator, decoding, "scripts")]["evaluation"]["curve"]
        chosen = next((p for p in validation if p["precision"] >= args.target_precision), validation[-1])
        table = Table(title=f"{generator}, {decoding}: precision / recall / no term kept over the confidence floor "
                            f"({args.type_concepts} concepts a type x {args.precision_languages}); floor chosen on "
                            f"scripts for precision >= {args.target_precision}: {chosen['min_confidence']:.2f}")
        table.add_column("concept type")
        for point in validation:
            table.add_column(f">= {point['min_confidence']:.2f}", justify="right")
        for kind in ("scripts", "currencies", "languages"):
            curve = found[(generator, decoding, kind)]["evaluation"]["curve"]
            label = kind + (" (validation)" if kind == "scripts" else " (held out)")
            table.add_row(label, *[f"{p['precision']:.2f}/{p['recall']:.2f}/{p['no_term_share']:.0%}"
                                   + (" *" if p["min_confidence"] == chosen["min_confidence"] else "")
                                   for p in curve])
        console.print(table)


def cldr_terms(n: int) -> list[Term]:
    """Up to n distinct real names: territories and languages in every CLDR locale."""
    from babel import Locale
    from babel.localedata import locale_identifiers

    terms, seen = [], set()
    for locale in sorted(locale_identifiers()):
        try:
            loaded = Locale.parse(locale)
        except ValueError:
            continue
        for kind, names in (("territory", loaded.territories), ("language", loaded.languages),
                            ("currency", loaded.currencies)):
            for code, name in names.items():
                if (key := match_key(name)) not in seen:
                    seen.add(key)
                    terms.append(Term(f"{kind}:{code}", locale, name, 0.0))
    return random.Random(0).sample(terms, min(n, len(terms)))


def naive_find(terms: list[Term], text: str) -> list[tuple]:
    """The baseline: test every term against the case-folded text."""
    folded, found = text.casefold(), []
    for term in terms:
        key = match_key(term.text)
        start = folded.find(key)
        while start != -1:
            if written_without_spaces(key) or at_word_boundaries(folded, start, start + len(key)):
                found.append((term.concept, start))
            start = folded.find(key, start + 1)
    return found


def match_latency(n_terms: int, n_texts: int) -> tuple[list[tuple], int]:
    terms = cldr_terms(n_terms)
    automaton = build_automaton(term_entries(terms))
    rng = random.Random(1)
    words = [t.text for t in rng.sample(terms, 2000)] + "the of and to in flights from with for news".split() * 100
    texts = []
    for _ in range(n_texts):
        text = ""
        while len(text) < 300:
            text += rng.choice(words) + " "
        texts.append(text.strip())
    fast, slow = [], []
    for text in texts:
        started = time.perf_counter()
        find_terms(automaton, text, 100)
        fast.append(time.perf_counter() - started)
    for text in texts[: max(5, n_texts // 50)]:
        started = time.perf_counter()
        naive_find(terms, text)
        slow.append(time.perf_counter() - started)

    def p(values, q):
        return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) >= 2 else values[0] * 1000

    rows = [("Aho-Corasick (find_terms)", len(fast), f"{p(fast, 50):.3f}", f"{p(fast, 99):.3f}", "-"),
            ("naive loop over every term", len(slow), f"{p(slow, 50):.3f}", f"{p(slow, 99):.3f}",
             f"{statistics.median(slow) / statistics.median(fast):.0f}x")]
    return rows, len(terms)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", type=int, default=40)
    parser.add_argument("--languages", default=LANGUAGES)
    parser.add_argument("--per-language", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64, help="prompts in the throughput comparison")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--terms", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-expand"))
    parser.add_argument("--skip", default="", help="comma list of parts to skip: throughput,quality,match,precision")
    parser.add_argument("--type-concepts", type=int, default=40, help="concepts of each CLDR type (precision part)")
    parser.add_argument("--precision-languages", default="de,fr,es,it,pt")
    parser.add_argument("--samples", type=int, default=5, help="sampled candidates a pair (self-consistency)")
    parser.add_argument("--target-precision", type=float, default=0.5)
    parser.add_argument("--decodings", default="beam,sample,back-translated",
                        help="the precision part's decodings: beam, sample, back-translated (beam, then checked)")
    parser.add_argument("--skip-prompted", action="store_true", help="precision part: the tuned generator only")
    parser.add_argument("--tune-types", default=DEFAULT_TUNE_TYPES,
                        help="built-in types the precision part's tuned generator learns from ('' for none)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    skip = set(args.skip.split(","))
    console = Console(width=220)
    if "throughput" not in skip:
        table = Table(title=f"generation throughput: {args.prompts} prompts (3-shot chat prompt, SmolLM2), "
                            f"candidates per second, median of {REPEATS} runs")
        for column in ("decoding", "one prompt at a time", f"batches of {args.batch}",
                       f"batches of {args.batch} + prefix cache (expand's path)", "expand / one at a time"):
            table.add_column(column, justify="left" if column == "decoding" else "right")
        for row in throughput(args.prompts, args.batch):
            table.add_row(*row)
        console.print(table)
    if "quality" not in skip:
        reports = quality(args)
        languages = args.languages.split(",")
        table = Table(title=f"countries (CLDR): {args.concepts} held-out countries x {len(languages)} languages, "
                            f"recall@{args.per_language} / precision")
        table.add_column("generator")
        for language in languages:
            table.add_column(language, justify="right")
        table.add_column("mean", justify="right")
        table.add_column("terms/s", justify="right")
        for name, report in reports.items():
            cells = [f"{report['per_language'][lang]['recall']:.2f}/{report['per_language'][lang]['precision']:.2f}"
                     if lang in report["per_language"] else "-" for lang in languages]
            table.add_row(name, *cells, f"{report['recall']:.3f}/{report['precision']:.3f}",
                          f"{report['terms_per_s']:.1f}")
        console.print(table)
    if "precision" not in skip:
        found = precision_curves(args)
        precision_tables(found, args, console)
        (args.out / "precision.json").write_text(json.dumps({"/".join(key): v for key, v in found.items()}))
    if "match" not in skip:
        rows, n_terms = match_latency(args.terms, 2000)
        table = Table(title=f"/match server time: {n_terms:,} CLDR terms, texts of ~300 characters")
        for column in ("matcher", "texts", "p50 ms", "p99 ms", "naive / fast (median)"):
            table.add_column(column, justify="left" if column == "matcher" else "right")
        for row in rows:
            table.add_row(*map(str, row))
        console.print(table)


if __name__ == "__main__":
    main()
