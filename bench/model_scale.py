"""Speed per parameter and memory against the plan, on models of real shapes: SmolLM2-135M's, -360M's and -1.7B's
configurations with random weights (built here, nothing downloaded; SmolLM2's own tokenizer), saved as model
folders and run through `tunelab` as a user would, each command in its own process so that its peak memory is its
own (os.wait4's ru_maxrss).

For each shape: zero-shot scoring (`tunelab prompt`), LoRA on an fp32 and on a bf16 base, and full fine-tuning
(`tunelab tune`, one epoch on a few VADER words, --precision fp32): tokens/s, the measured peak, and the memory
plan's estimate for the same run (`tunelab info --memory`, or the plan the run recorded). A run the plan refuses
is shown as refused, with what it said. `--cgroup-gib 12` runs every command inside a cgroup (v1 or v2) with that
memory limit, as a container would set it (needs root).

    python bench/model_scale.py [--shapes 135m,360m,1.7b] [--train 32] [--cgroup-gib 12]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from harness import describe_cpu, run_with_peak
from rich.console import Console
from rich.table import Table

# SmolLM2's published configurations (the Hugging Face model cards' config.json), less their weights
SHAPES = {
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3),
    "360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                 num_key_value_heads=5),
    "1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32),
}
RUNS = (("score", "fp32"), ("lora", "fp32"), ("lora", "bf16"), ("full", "fp32"))


def build(shape: str, folder: Path, tokenizer_source: str) -> None:
    """A random model of the shape, saved in bf16 like a published checkpoint, with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return
    config = LlamaConfig(vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
                         rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(folder)


def run_measured(command: list[str], cgroup: Path | None) -> tuple[int, float, float, str]:
    """(exit status, seconds, peak RSS in GiB, stdout or the error line) of one command in its own process."""
    code, seconds, peak, stdout, stderr = run_with_peak(
        command, (lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid()))) if cgroup else None)
    text = stdout if code == 0 else (stderr.strip().splitlines() or [f"(killed, exit {code}, nothing said)"])[-1]
    return code, seconds, peak, text


def make_cgroup(gib: float) -> Path:
    """A memory cgroup limited to `gib` (v2 where mounted so, else v1's memory controller)."""
    limit = str(int(gib * 2**30))
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    folder = Path("/sys/fs/cgroup/tunelab-bench") if v2.exists() else Path("/sys/fs/cgroup/memory/tunelab-bench")
    folder.mkdir(exist_ok=True)
    (folder / ("memory.max" if v2.exists() else "memory.limit_in_bytes")).write_text(limit)
    # page cache an earlier run left charged to the group counts against the limit: reclaim it first
    (folder / ("memory.reclaim" if v2.exists() else "memory.force_empty")).write_text(limit if v2.exists() else "0")
    return folder


def words(n_train: int, n_test: int, folder: Path) -> tuple[Path, Path]:
    from tunelab.tasks import load_task

    task = load_task("vader")
    paths = []
    for name, examples in (("train", task.train[:n_train]), ("test", task.test[:n_test])):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in examples))
        paths.append(path)
    return paths[0], paths[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="135m,360m,1.7b")
    parser.add_argument("--runs", default=",".join(f"{m}:{b}" for m, b in RUNS))
    parser.add_argument("--train", type=int, default=32)
    parser.add_argument("--test", type=int, default=16)
    parser.add_argument("--cgroup-gib", type=float, default=None)
    parser.add_argument("--work", default=None, help="folder for the built models (kept between runs)")
    args = parser.parse_args()
    from tunelab.models import SMOLLM2_NAME

    work = Path(args.work or Path(tempfile.gettempdir()) / "tunelab-model-scale")
    work.mkdir(parents=True, exist_ok=True)
    tokenizer_source = str(_smollm2_folder())
    train, test = words(args.train, args.test, work)
    cgroup = make_cgroup(args.cgroup_gib) if args.cgroup_gib else None
    console = Console(width=180)
    console.print(f"{describe_cpu()}; limit: {f'cgroup {args.cgroup_gib} GiB' if cgroup else 'none'};"
                  f" tokenizer of {SMOLLM2_NAME}; {args.train} training / {args.test} test words, --precision fp32")
    table = Table(title="speed per parameter, and the memory plan against the measured peak")
    for column in ("shape", "params", "run", "status", "seconds", "speed", "peak GiB", "plan GiB",
                   "plan / peak", "note"):
        table.add_column(column)
    tunelab = [sys.executable, "-m", "tunelab.cli"]
    for shape in args.shapes.split(","):
        folder = work / f"smollm2-{shape}-random"
        build(shape, folder, tokenizer_source)
        _, _, _, info = run_measured([*tunelab, "info", "--model", str(folder), "--memory", "--json"], None)
        plans = {(p["method"], p["base_precision"]): p for p in json.loads(info)["plans"]}
        params = plans["full", "fp32"]["parts"]["gradients"] // 4
        for run in args.runs.split(","):
            method, base = run.split(":")
            task = ["--train", str(train), "--test", str(test), "--model", str(folder), "--precision", "fp32",
                    "--json"]
            if method == "score":
                command = [*tunelab, "prompt", "--shots", "0", *task]
            else:
                command = [*tunelab, "tune", *task, "--method", method, "--base-precision", base, "--epochs", "1",
                           "--min-steps", "0", "--batch-size", "8", "--overwrite",
                           "--out", str(work / f"{shape}-{method}-{base}")]
            code, seconds, peak, text = run_measured(command, cgroup)
            planned = plans[method, base]["total"] / 2**30
            rate, note, status = "-", "", "ok" if code == 0 else f"exit {code}"
            if code == 0:
                result = json.loads(text.strip().splitlines()[-1])
                if result.get("memory_plan"):  # made after loading: the loading phase is the first plan's
                    parts = plans[method, base]["parts"]
                    loading = parts["process"] + parts["weights"] + parts["mapped files (loading)"]
                    planned = max(result["memory_plan"]["total"], loading) / 2**30
                if method == "score":
                    rate = f"{result['examples_per_s']:,.1f} words/s"
                else:
                    rate = f"{result['distributed']['tokens_per_s']:,.0f} train tokens/s"
                    note = result["memory_plan"]["reason"]
            else:
                note = text[:120]
                if "will not fit" in text:
                    status = "refused"
            table.add_row(shape, f"{params / 1e6:,.0f}M", f"{method} ({base} base)", status, f"{seconds:.0f}", rate,
                          f"{peak:.2f}", f"{planned:.2f}", f"{planned / peak:.2f}" if code == 0 else "-", note)
            console.print(f"{shape} {method} ({base} base): {status}, {seconds:.0f} s, peak {peak:.2f} GiB, plan "
                          f"{planned:.2f} GiB {note}")
    console.print(table)


def _smollm2_folder() -> Path:
    """The converted SmolLM2 folder, whose tokenizer the shapes use."""
    from tunelab.models import BUNDLED_MODELS, _converted_gguf

    return _converted_gguf(BUNDLED_MODELS["smollm2"].locate(None), lambda message: None)[0]


if __name__ == "__main__":
    main()
