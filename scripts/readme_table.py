"""The README's result table, written from a stored ladder report (docs/quick-report.json: `make run`'s
runs/quick/report.json, trimmed by `--store`). tests/test_docs.py checks that the README holds exactly this output.

    python scripts/readme_table.py                       # print the table from docs/quick-report.json
    python scripts/readme_table.py --store runs/quick/report.json   # keep a new run's report, then print
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STORED = Path(__file__).resolve().parent.parent / "docs" / "quick-report.json"
BEGIN, END = "<!-- quick-ladder-table: scripts/readme_table.py -->", "<!-- /quick-ladder-table -->"
KEPT = ("metrics", "train_seconds", "teacher", "searched", "bias")  # what the table reads of each rung


def rung_name(rung: str, result: dict) -> str:
    names = {"tfidf": "TF-IDF + logistic regression", "embed": "frozen MiniLM embeddings + logistic regression",
             "probe": "frozen-LLM probe (SmolLM2 states + logistic regression)", "zero": "zero-shot prompt",
             "one": "one-shot prompt", "lora": "LoRA fine-tuning", "full": "full fine-tuning"}
    if rung == "few":
        kept = result.get("searched")
        return f"searched prompt (kept {'zero-shot' if kept == 'K=0' else kept})" if kept else "few-shot prompt"
    if rung == "distill":
        return f"MiniLM student of {Path(result.get('teacher') or 'teacher').parent.name}"
    if rung == "cascade":
        return (f"cascade: the student, then its teacher for the {result['metrics']['escalated_share']:.0%} it is "
                "unsure of")
    return names.get(rung, rung)


def interval(value: float, bounds) -> str:
    return f"{value:.3f} [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else f"{value:.3f}"


def table(report: dict) -> str:
    metric = report["choice"]["metric"]
    lines = [f"| rung | {metric} [95%] | examples/s | params total | params trainable | build s "
             "| name-probe gap [95%], verdict |", "|---|---|---|---|---|---|---|"]
    for rung, result in report["rungs"].items():
        metrics, probe = result["metrics"], result["bias"]["counterfactual"]
        lines.append(f"| {rung_name(rung, result)} | {interval(metrics[metric], metrics['intervals'][metric])} "
                     f"| {metrics['examples_per_s']:,.0f} | {metrics['params_total']:,} "
                     f"| {metrics['params_trainable']:,} | {result.get('train_seconds') or 0.0:.1f} "
                     f"| {interval(probe['gap'], probe.get('gap_interval'))}, {probe['verdict']} |")
    choice = report["choice"]
    chosen = choice["cheapest_to_build"]
    lines += ["", f"Recommended: {chosen} (the cheapest rung whose whole interval clears {choice['target']}; "
                  f"measured in {report['wall_seconds']:.0f} s)."]
    return "\n".join(lines)


def trimmed(report: dict) -> dict:
    """The report less what the table does not read (test outputs, search rows, flips): a small file to keep."""
    rungs = {rung: {key: result[key] for key in KEPT if key in result} for rung, result in report["rungs"].items()}
    for result in rungs.values():
        result["bias"] = {"counterfactual": {key: result["bias"]["counterfactual"][key]
                                             for key in ("gap", "gap_interval", "verdict")}}
        result["metrics"].pop("reliability", None)
    return {"task": report["task"], "model": report["model"], "wall_seconds": report["wall_seconds"],
            "choice": {key: report["choice"][key] for key in ("metric", "target", "cheapest_to_build")},
            "rungs": rungs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="a report.json to keep as docs/quick-report.json first")
    args = parser.parse_args()
    if args.store:
        STORED.write_text(json.dumps(trimmed(json.loads(args.store.read_text())), indent=1) + "\n")
    print(table(json.loads(STORED.read_text())))


if __name__ == "__main__":
    main()
