"""Export a student (or the embed baseline) to ONNX, optionally with int8 weights, refused unless the export
predicts what the torch predictor predicts.

What is exported: the encoder student (a BERT-style sequence classifier, MiniLM by default), the rung that is meant
to be shipped, and the embed baseline (its frozen MiniLM pooled in the graph, its linear head in `head.json`). The
graph comes from torch.onnx.export (torch's own exporter, no extra converter to keep in step with transformers);
int8 is onnxruntime's dynamic quantization (weights stored in 8 bits, activations quantized per batch at run time:
no calibration data needed, and matrix products run on the CPU's integer units). The causal-LM rungs (tuned
teacher, pruned student) are not exported: their key/value-cache prompts and label scoring are not one graph, and
onnxruntime's generative API is a separate package; nor is the probe (it reads a causal LM's states) or TF-IDF (no
network to export). A clear error says so.

The gate: on the task's test texts (or given texts) the export must give the same label as the torch predictor on
at least 99.5% of them, every probability within PROB_TOLERANCE, and (with labels) an ECE within 0.01 of the torch
predictor's; otherwise nothing is written and the error gives the figures.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from tunelab.atomic import replace_folder
from tunelab.errors import ConfigError, ModelError
from tunelab.measure.evaluate import expected_calibration_error
from tunelab.predictor import ARTIFACT_FILE, FORMAT_VERSION, Predictions, load_predictor, predict
from tunelab.rungs.baseline import EMBED_OVERLAP, BaselinePredictor
from tunelab.rungs.students import ENCODER_OVERLAP, EncoderStudent
from tunelab.ship.onnx_predictor import HEAD_FILE, OnnxPredictor, require_onnx

AGREEMENT = 0.995
# Half a calibration bin, as the bf16 parity check (scoring/precision.py): a moved probability matters where it
# flips a prediction (counted by AGREEMENT) or moves a confidence bin.
PROB_TOLERANCE = 0.05
ECE_DRIFT = 0.01
OPSET = 17


def parity_figures(reference: np.ndarray, exported: np.ndarray, gold: np.ndarray | None) -> dict:
    """How far the export's probabilities are from the torch predictor's, and whether the gate passes."""
    agreement = float(np.mean(reference.argmax(axis=1) == exported.argmax(axis=1)))
    largest = float(np.max(np.abs(reference - exported)))
    figures = {"n": len(reference), "agreement": agreement, "max_prob_difference": largest,
               "agreement_needed": AGREEMENT, "prob_tolerance": PROB_TOLERANCE}
    passes = agreement >= AGREEMENT and largest <= PROB_TOLERANCE
    if gold is not None:
        ece = [expected_calibration_error(p.max(axis=1), (p.argmax(axis=1) == gold).astype(float))
               for p in (reference, exported)]
        figures.update(ece_torch=ece[0], ece_export=ece[1], ece_drift=abs(ece[1] - ece[0]), ece_drift_allowed=ECE_DRIFT)
        passes = passes and abs(ece[1] - ece[0]) <= ECE_DRIFT
    figures["passes"] = passes
    return figures


def label_set_parity(reference: Predictions, exported: Predictions) -> dict:
    """Several labels an example: the share of texts given the same label set, and the largest score difference."""
    agreement = float(np.mean(np.all(reference.chosen == exported.chosen, axis=1)))
    largest = float(np.max(np.abs(reference.probs - exported.probs)))
    return {"n": len(reference), "agreement": agreement, "max_prob_difference": largest,
            "agreement_needed": AGREEMENT, "prob_tolerance": PROB_TOLERANCE,
            "passes": agreement >= AGREEMENT and largest <= PROB_TOLERANCE}


def _export_graph(student, path: Path) -> None:
    """The encoder's graph (an encoder student's, or the embed baseline's pooled embedder) with dynamic batch and
    sequence axes (torch.onnx.export)."""
    module, tokenizer, output = _exportable(student, path)
    encoder = module.float().eval().to("cpu")
    sample = tokenizer(["a b c", "a"], padding=True, return_tensors="pt")
    if output == "vectors" and "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {output: {0: "batch"}}
    # The tracer warns about every shape test it freezes; the parity gate below checks the graph on texts of many
    # lengths (windows included), which is the check those warnings ask for.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, tuple(sample[name] for name in names), str(path), input_names=names,
                          output_names=[output], dynamic_axes=axes, opset_version=OPSET, dynamo=False)


class _PooledEmbedder(torch.nn.Module):
    """The embed baseline's frozen encoder as one graph: mean pooling over the mask, L2-normalised (as
    MiniLMEmbedder); the linear head is applied after a long text's windows are averaged, outside the graph."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1)


def _exportable(predictor, predictor_dir) -> tuple[torch.nn.Module, object, str]:
    """(module, tokenizer, output name) of a predictor export supports; ConfigError for the others."""
    if isinstance(predictor, EncoderStudent):
        return predictor.encoder, predictor.tokenizer, "logits"
    if isinstance(predictor, BaselinePredictor) and predictor.embed is not None:
        embedder = predictor.embed.embedder
        return _PooledEmbedder(embedder.encoder), embedder.tokenizer, "vectors"
    raise ConfigError(f"{predictor_dir}: a {predictor.rung} predictor; export supports the encoder student "
                      "(tunelab distill --student minilm or encoder:PATH) and the embed baseline (tunelab baseline "
                      "--method embed). Causal-LM rungs and the probe score through prompts or a causal LM's states, "
                      "which this export does not cover; TF-IDF has no network to export")


def _head(predictor) -> dict:
    """The embed baseline's linear head as plain numbers (the export's `head.json`)."""
    linear = predictor.linear
    return {"coef": np.atleast_2d(linear.coef_).tolist(), "intercept": np.atleast_1d(linear.intercept_).tolist(),
            "classes": [str(c) for c in getattr(linear, "classes_", [])], "value_range": predictor.value_range}


def export_onnx(predictor_dir: str | Path, out_dir: str | Path, texts: list[str], *, gold_labels=None,
                quantize: str | None = None, overwrite: bool = False) -> dict:
    """Export the saved encoder student in `predictor_dir` to `out_dir` (ONNX, int8 weights with quantize="int8")
    and check it on `texts` (and their `gold_labels`, when given). Returns the export's facts.

    Raises:
        ConfigError: not an encoder student, an existing `out_dir` without `overwrite`, no texts.
        ModelError: the export failed the parity gate (nothing is written; the message has the figures).
    """
    if Path(out_dir).exists() and not overwrite:
        raise ConfigError(f"{out_dir} exists; pass --overwrite to replace it")
    require_onnx()
    if not texts:
        raise ConfigError("the parity check needs texts: give --task/--train or --texts")
    student = load_predictor(predictor_dir)
    _, tokenizer, output = _exportable(student, predictor_dir)
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize must be int8, got {quantize!r}")
    as_saved = getattr(student, "precision", "fp32")
    if output == "logits":
        student.set_precision("fp32")  # the reference is the fp32 torch predictor
    reference = predict(student, texts) if student.kind != "regression" else None
    gold = None
    if gold_labels is not None and student.kind == "classification":
        gold = np.array([student.label_names.index(label) for label in gold_labels])
    facts: dict = {}

    def fill(folder: Path) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            graph = Path(scratch) / "model.onnx"
            _export_graph(student, graph)
            if quantize == "int8":
                from onnxruntime.quantization import QuantType, quantize_dynamic
                from onnxruntime.quantization.shape_inference import quant_pre_process

                # shapes inferred and the graph simplified first, as onnxruntime's quantization guide asks (its
                # symbolic shape inference does not follow this graph's dynamic axes; ONNX's own inference does)
                prepared = Path(scratch) / "prepared.onnx"
                quant_pre_process(str(graph), str(prepared), skip_symbolic_shape=True)
                # one scale per output channel: a layer's rows differ in range, and one scale for all cost parity
                quantize_dynamic(str(prepared), str(folder / "model.onnx"), weight_type=QuantType.QInt8,
                                 per_channel=True)
            else:
                graph.replace(folder / "model.onnx")
        tokenizer.save_pretrained(folder / "tokenizer")
        (folder / "tokenizer" / "tokenizer.json").replace(folder / "tokenizer.json")  # all the tokenizers library reads
        shutil.rmtree(folder / "tokenizer")
        if output == "vectors":  # the embed baseline: windows averaged, then its linear head (head.json)
            (folder / HEAD_FILE).write_text(json.dumps(_head(student)), encoding="utf-8")
            reading = {"long_texts": student.embed.long_texts, "overlap": EMBED_OVERLAP, "spec": "embed baseline",
                       "fields": student.embed.fields}
        else:
            reading = {"long_texts": student.long_texts, "overlap": ENCODER_OVERLAP,
                       "spec": student.meta.get("spec", "encoder"), "fields": student.text_fields}
        fields = {"text_fields": list(reading["fields"]), "separator": tokenizer.sep_token} if reading["fields"] else {}
        payload = {"format_version": FORMAT_VERSION, "rung": "onnx", "kind": student.kind,
                   "labels": list(student.label_names), "max_length": student.max_length,
                   "long_texts": reading["long_texts"], "overlap": reading["overlap"], "output": output,
                   "pad_id": tokenizer.pad_token_id, "quantize": quantize, **fields,
                   **({"thresholds": list(student.thresholds)} if student.kind == "multilabel" else {}),
                   "source": {"path": str(predictor_dir), "fingerprint": student.fingerprint,
                              "spec": reading["spec"]},
                   "params_total": student.params_total, "params_trainable": student.params_trainable}
        exported = OnnxPredictor(folder, payload)
        if student.kind == "classification":
            figures = parity_figures(reference.probs, predict(exported, texts).probs, gold)
        elif student.kind == "multilabel":
            figures = label_set_parity(reference, predict(exported, texts))
        else:
            values = [predict(p, texts).values for p in (student, exported)]
            largest = float(np.max(np.abs(values[0] - values[1])))
            figures = {"n": len(texts), "max_value_difference": largest, "passes": largest <= 1e-2}
        if not figures["passes"]:
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
            raise ModelError(f"export refused: it does not predict what {predictor_dir} predicts ({json.dumps(shown)})")
        payload["parity"] = figures
        payload["fingerprint"] = exported.fingerprint
        (folder / ARTIFACT_FILE).write_text(json.dumps(payload, indent=1), encoding="utf-8")
        facts.update(payload, bytes=sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()))
        # An export is for serving without torch, not always for speed: on a CPU with bf16 matrix units the torch
        # student in bf16 outran the fp32 export 1.8x (machine D, vader words); the user sees which is faster here.
        if output == "logits":
            student.set_precision(as_saved)
        facts["speed"] = {"texts": len(texts), "torch_precision": as_saved,
                          "torch_examples_per_s": _examples_per_s(student, texts),
                          "export_examples_per_s": _examples_per_s(exported, texts)}

    replace_folder(out_dir, fill)
    return facts


def _examples_per_s(predictor, texts: list[str]) -> float:
    """One timed pass over `texts` after a short warm-up (the first call pays for kernel selection)."""
    predict(predictor, texts[:8])
    started = time.perf_counter()
    predict(predictor, texts)
    return len(texts) / max(time.perf_counter() - started, 1e-9)


def export_lines(facts: dict, out_dir: str | Path) -> list[str]:
    parity = facts["parity"]
    agreement = (f"same label on {parity['agreement']:.1%} of {parity['n']} texts, probabilities within "
                 f"{parity['max_prob_difference']:.4f}" if "agreement" in parity
                 else f"values within {parity['max_value_difference']:.4f} on {parity['n']} texts")
    ece = (f", ECE {parity['ece_torch']:.4f} -> {parity['ece_export']:.4f}" if "ece_torch" in parity else "")
    lines = [f"exported {facts['source']['spec']} to {out_dir} (ONNX{', int8 weights' if facts['quantize'] else ''}, "
             f"{facts['bytes'] / 1e6:.1f} MB); parity passed: {agreement}{ece}"]
    if "speed" in facts:
        speed = facts["speed"]
        ratio = speed["export_examples_per_s"] / speed["torch_examples_per_s"]
        lines.append(f"speed on these {speed['texts']} texts here: export {speed['export_examples_per_s']:,.0f} "
                     f"examples/s, the torch predictor ({speed['torch_precision']}) "
                     f"{speed['torch_examples_per_s']:,.0f}: {ratio:.2f}x"
                     + ("; the export is for serving without torch, not for speed on this machine" if ratio < 1
                        else ""))
    return lines
