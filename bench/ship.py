"""Shipping with guarantees (issue #26), one run per task: the cascade of the MiniLM student and the LoRA teacher,
temperature calibration, and the ONNX (fp32 and int8) export of the student, against the torch models.

Per task, --validation training examples are held out of *both* members before anything is trained (the teacher
tunes on the rest; the student learns from the teacher on the rest and the task's unlabeled texts); the cascade's
threshold and the temperature are fitted on them; every figure is on the test split. The cascade's threshold is
chosen to reach the teacher's own validation accuracy with the fewest escalations.

    python bench/ship.py [--tasks vader,subjectivity] [--validation 100] [--transfer 700] [--out runs/bench-ship]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from harness import examples_per_s
from rich.console import Console
from rich.table import Table

from tunelab.config import DistillConfig, TuneConfig
from tunelab.errors import ModelError
from tunelab.models import load_model
from tunelab.predictor import load_predictor
from tunelab.rungs.distill import distill
from tunelab.rungs.tuning import finetune
from tunelab.ship.calibration import calibrate, calibration_report
from tunelab.ship.cascade import build_cascade, cascade_report
from tunelab.ship.export import export_onnx
from tunelab.tasks import load_task, split_examples

console = Console(width=180)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def one_task(model, name: str, args) -> dict:
    out = args.out / name
    task = load_task(name)
    if args.smoke:  # a quick check of the script itself: a few examples, one epoch
        task = dataclasses.replace(task, train=task.train[:80], test=task.test[:40])
    kept, held = split_examples(list(task.train), task.kind, args.validation / len(task.train), 0)
    task = dataclasses.replace(task, train=tuple(kept))
    console.print(f"{name}: {len(kept)} training, {len(held)} validation (held out of both), {len(task.test)} test")
    started = time.perf_counter()
    tune = TuneConfig(method="lora", epochs=1, min_steps=0) if args.smoke else TuneConfig(method="lora")
    teacher = finetune(model, task, tune, out_dir=out / "lora", overwrite=True)
    teacher_s = time.perf_counter() - started
    transfer = [e.text for e in task.train] + list(task.unlabeled[: args.transfer])
    started = time.perf_counter()
    distill(teacher, task, DistillConfig(), out_dir=out / "student", transfer_texts=transfer)
    student_s = time.perf_counter() - started
    source = f"{len(held)} training examples held out of both members"
    cascade = build_cascade(out / "student", out / "lora", task, held, source=source, out_dir=out / "cascade")
    cascade_result = cascade_report(cascade, task, out / "cascade", overwrite=True)
    calibrated = calibrate(load_predictor(out / "lora"), held, task, source=source)
    calibration = calibration_report(calibrated, task, out / "lora-calibrated", overwrite=True)
    texts, gold = [e.text for e in task.test], [e.label for e in task.test]
    exports, refused = {}, {}
    for quantize in (None, "int8"):
        folder = out / f"onnx-{quantize or 'fp32'}"
        try:
            exports[quantize or "fp32"] = export_onnx(out / "student", folder, texts, gold_labels=gold,
                                                      quantize=quantize, overwrite=True)
        except ModelError as refusal:  # the gate said no: the figures are the result
            refused[quantize or "fp32"] = str(refusal)
            console.print(f"  {quantize or 'fp32'}: {refusal}")
    speeds = {"torch": examples_per_s(load_predictor(out / "student"), texts)}
    speeds.update({kind: examples_per_s(load_predictor(out / f"onnx-{kind}"), texts) for kind in exports})
    sizes = {"torch": folder_bytes(out / "student"), **{kind: folder_bytes(out / f"onnx-{kind}") for kind in exports}}
    return {"task": name, "n_train": len(kept), "n_validation": len(held), "n_test": len(texts),
            "teacher_build_s": teacher_s, "student_build_s": student_s, "cascade": cascade_result,
            "calibration": calibration, "exports": {k: v["parity"] for k, v in exports.items()}, "refused": refused,
            "speeds": speeds, "sizes": sizes}


def tables(results: list[dict]) -> None:
    table = Table(title="cascade (MiniLM student first, LoRA teacher for the rest), test split")
    for column in ("task", "teacher acc [95%]", "student acc", "cascade acc [95%]", "cascade - teacher [95%]",
                   "escalated", "threshold", "teacher ex/s", "cascade ex/s", "speed vs teacher"):
        table.add_column(column)
    for r in results:
        c = r["cascade"]
        teacher, cascade = c["strong"], c["metrics"]
        interval = lambda m: f"[{m['intervals']['accuracy'][0]:.3f}, {m['intervals']['accuracy'][1]:.3f}]"  # noqa: E731
        low, high = c["versus_strong"]["interval"]
        table.add_row(r["task"], f"{teacher['accuracy']:.3f} {interval(teacher)}", f"{c['fast']['accuracy']:.3f}",
                      f"{cascade['accuracy']:.3f} {interval(cascade)}",
                      f"{c['versus_strong']['difference']:+.3f} [{low:+.3f}, {high:+.3f}]",
                      f"{cascade['escalated_share']:.1%}", f"{c['selection']['chosen']['threshold']:.3f}",
                      f"{teacher['examples_per_s']:.1f}", f"{cascade['examples_per_s']:.1f}",
                      f"{c['speed_ratio']:.1f}x")
    console.print(table)
    table = Table(title="temperature scaling of the LoRA teacher (fitted on the held-out examples), test ECE")
    for column in ("task", "temperature", "ECE before [95%]", "ECE after [95%]"):
        table.add_column(column)
    for r in results:
        cal = r["calibration"]
        show = lambda f: f"{f['ece']:.3f} [{f['interval'][0]:.3f}, {f['interval'][1]:.3f}]"  # noqa: E731
        table.add_row(r["task"], f"{cal['temperature']:.3f}", show(cal["test_ece_before"]), show(cal["test_ece_after"]))
    console.print(table)
    table = Table(title="the MiniLM student: torch against ONNX (onnxruntime), test split, best of 3 passes")
    for column in ("task", "format", "examples/s", "vs torch", "folder MB", "torch / this size", "same label",
                   "max prob diff", "ECE drift"):
        table.add_column(column)
    for r in results:
        for kind in ("torch", *r["exports"]):
            parity = r["exports"].get(kind)
            speed = r["speeds"][kind]
            table.add_row(r["task"], kind, f"{speed:.1f}", f"{speed / r['speeds']['torch']:.2f}x",
                          f"{r['sizes'][kind] / 1e6:.1f}", f"{r['sizes']['torch'] / r['sizes'][kind]:.1f}x",
                          f"{parity['agreement']:.1%}" if parity else "-",
                          f"{parity['max_prob_difference']:.4f}" if parity else "-",
                          f"{parity['ece_drift']:.4f}" if parity else "-")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="vader,subjectivity")
    parser.add_argument("--validation", type=int, default=100)
    parser.add_argument("--transfer", type=int, default=700, help="unlabeled texts added to the student's transfer set")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ship"))
    parser.add_argument("--smoke", action="store_true", help="a few examples only: checks the script, measures nothing")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model()
    results = [one_task(model, name, args) for name in args.tasks.split(",")]
    tables(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
