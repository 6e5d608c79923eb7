"""int8 ONNX students against the parity gate (issue #26): which int8 schemes keep the student's predictions, and at
what speed. Reads the students bench/ship.py trained (run it first, or pass --out where they are).

Per task, the same 100 training examples bench/ship.py held out of the student (it never learned them) choose what
a scheme may choose (which nodes stay fp32, calibration ranges); every figure is on the test split. Arms:

- dynamic: onnxruntime's dynamic quantization (the export's int8: weights per channel, activations per batch);
- dynamic, k most sensitive nodes in fp32: each weight node quantized alone, its damage (mean absolute probability
  change on the held-out texts) ranks the nodes; the k worst are excluded;
- dynamic, one text per call: the activations' range from one text, not from the batch it shares;
- static (QOperator, QDQ): activation ranges calibrated on the held-out texts (MinMax);
- weight-only 8-bit in blocks of 32 (MatMulNBits; needs the `onnx-ir` package, skipped and said so without it);
- int8-aware fine-tuning, then dynamic: a copy of the student fine-tuned on its training texts with the export's
  int8 arithmetic simulated in torch (FakeInt8), its float forward held to the student's probabilities and its int8
  forward to the float one's; judged against that fine-tuned student (what its export would be gated on);
- with --outliers, the arms aimed at the activations' outlier channels: the word table int8 per column,
  SmoothQuant's per-channel scaling, and one activation range per token (a graph of standard operators).

    python bench/int8.py [--tasks vader,subjectivity] [--out runs/bench-ship] [--exclude 2,4,8,16,24]
                         [--int8-aware-epochs 3] [--skip-schemes] [--outliers [--smooth 0.5,0.85]]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from harness import examples_per_s
from rich.console import Console
from rich.table import Table

from tunelab.predictor import load_predictor, predict
from tunelab.rungs.students import ENCODER_OVERLAP
from tunelab.ship.export import PROB_TOLERANCE, _export_graph, parity_figures
from tunelab.ship.onnx_predictor import OnnxPredictor
from tunelab.tasks import load_task, split_examples

console = Console(width=180)


class Workbench:
    """One student's fp32 graph and a scratch folder in which each arm's model.onnx becomes a predictor."""

    def __init__(self, student, scratch: Path):
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.scratch = scratch
        _export_graph(student, scratch / "graph.onnx")
        self.graph = scratch / "prepared.onnx"
        quant_pre_process(str(scratch / "graph.onnx"), str(self.graph), skip_symbolic_shape=True)
        self.folder = scratch / "predictor"
        self.folder.mkdir()
        student.tokenizer.save_pretrained(scratch / "tokenizer")
        shutil.copy(scratch / "tokenizer" / "tokenizer.json", self.folder / "tokenizer.json")
        self.payload = {"kind": student.kind, "labels": list(student.label_names), "max_length": student.max_length,
                        "long_texts": student.long_texts, "overlap": ENCODER_OVERLAP,
                        "pad_id": student.tokenizer.pad_token_id, "params_total": student.params_total,
                        "params_trainable": student.params_trainable,
                        "source": {"spec": "student", "fingerprint": student.fingerprint}}

    def predictor(self) -> OnnxPredictor:
        return OnnxPredictor(self.folder, self.payload)

    def model_mb(self) -> float:
        return (self.folder / "model.onnx").stat().st_size / 1e6

    def weight_nodes(self) -> list[str]:
        """Nodes dynamic quantization may turn int8: products with a weight, and embedding look-ups of a table."""
        import onnx

        model = onnx.load(str(self.graph))
        floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
        return [n.name for n in model.graph.node
                if (n.op_type in ("MatMul", "Gemm") and any(i in floats for i in n.input))
                or (n.op_type == "Gather" and n.input[0] in floats)]

    def dynamic(self, **options) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(self.graph), str(self.folder / "model.onnx"), weight_type=QuantType.QInt8,
                         per_channel=True, **options)

    def static(self, student, texts: list[str], quant_format) -> None:
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType, quantize_static

        class Batches(CalibrationDataReader):
            def __init__(self):
                rows = []
                for start in range(0, len(texts), 16):
                    batch = student.tokenizer(texts[start : start + 16], padding=True, truncation=True,
                                              max_length=student.max_length, return_tensors="np")
                    rows.append({"input_ids": batch["input_ids"].astype(np.int64),
                                 "attention_mask": batch["attention_mask"].astype(np.int64),
                                 "token_type_ids": np.zeros_like(batch["input_ids"], dtype=np.int64)})
                self.rows = iter(rows)

            def get_next(self):
                return next(self.rows, None)

        quantize_static(str(self.graph), str(self.folder / "model.onnx"), Batches(), quant_format=quant_format,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["MatMul", "Gemm"])

    def weight_only(self) -> None:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(str(self.graph), bits=8, block_size=32, is_symmetric=True,
                                         accuracy_level=4, op_types_to_quantize=("MatMul",))
        quantizer.process()
        quantizer.model.save_model_to_file(str(self.folder / "model.onnx"), False)


def _fake_int8_activation(x: torch.Tensor) -> torch.Tensor:
    """What onnxruntime's DynamicQuantizeLinear does to a product's input (uint8, one scale for the whole tensor, its
    range widened to hold 0). Gradients pass the rounding straight through and reach the range too, so training can
    shrink the outliers that set it (as learned-step-size quantization does)."""
    low, high = torch.clamp(x.min(), max=0), torch.clamp(x.max(), min=0)
    scale = (high - low) / 255
    if scale.detach() == 0:
        return x
    zero = torch.clamp(torch.round(-low.detach() / scale.detach()), 0, 255)
    steps = x / scale
    rounded = steps + (torch.clamp(torch.round(steps) + zero, 0, 255) - zero - steps).detach()
    return rounded * scale


def _fake_int8_weight(weight: torch.Tensor) -> torch.Tensor:
    """A product's weights as the export stores them: symmetric int8 (-127..127), one scale per output row."""
    scale = torch.clamp(weight.detach().abs().amax(dim=1, keepdim=True), min=1e-12) / 127
    return weight + (torch.clamp(torch.round(weight / scale), -127, 127) * scale - weight).detach()


class FakeInt8:
    """Within the block, every Linear and Embedding of `module` computes as the export's dynamic int8 does: products
    take uint8 inputs (per tensor) and int8 weights (per row); an embedding table is quantized as an activation
    (uint8, one scale for the table: onnxruntime's Gather quantization). Attention's own products stay float.

    Written here because torch.ao's fake quantization observes ranges across calls (moving averages, static), while
    the export's ranges are each call's own; checked against onnxruntime in BENCHMARKS (mean change 0.0004)."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.saved = module, []

    def __enter__(self):
        import torch.nn.functional as F

        for layer in self.module.modules():
            if isinstance(layer, torch.nn.Linear):
                def linear(x, layer=layer):
                    return F.linear(_fake_int8_activation(x), _fake_int8_weight(layer.weight), layer.bias)
                self.saved.append((layer, layer.forward))
                layer.forward = linear
            elif isinstance(layer, torch.nn.Embedding):
                def lookup(ids, layer=layer):
                    return F.embedding(ids, _fake_int8_activation(layer.weight), layer.padding_idx)
                self.saved.append((layer, layer.forward))
                layer.forward = lookup
        return self

    def __exit__(self, *exc):
        for layer, forward in self.saved:
            layer.forward = forward
        self.saved = []


class _ScaledInput(torch.nn.Module):
    """A Linear whose input is first divided by per-channel factors that its weight's columns were multiplied by:
    the same function, with the input's outlier channels moved into the weight (exported as a Mul before the MatMul)."""

    def __init__(self, linear: torch.nn.Linear, factors: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer("inverse", 1 / factors)
        with torch.no_grad():
            linear.weight.mul_(factors)

    def forward(self, x):
        return self.linear(x * self.inverse)


def smoothed(student, texts: list[str], alpha: float):
    """A copy of the student with SmoothQuant's per-channel scaling (Xiao et al., 2022): each encoder product's input
    channel j is divided by max|X_j|^alpha / max|W_j|^(1-alpha) (maxima over `texts`) and the weight's column j
    multiplied by it. SmoothQuant folds the division into the LayerNorm before; in BERT (post-LN) that LayerNorm's
    output is also the residual, so folding would change the function and the division stays an explicit multiply.
    The pooler and the classifier, whose inputs have no outliers, are left alone."""
    import copy

    smooth = copy.deepcopy(student)
    smooth.set_precision("fp32")
    maxima, hooks = {}, []
    products = {name: layer for name, layer in smooth.encoder.named_modules()
                if isinstance(layer, torch.nn.Linear) and ".encoder.layer." in f".{name}"}

    def record(name):
        def hook(module, inputs, output):
            seen = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(dim=0)
            maxima[name] = torch.maximum(maxima[name], seen) if name in maxima else seen
        return hook

    hooks = [layer.register_forward_hook(record(name)) for name, layer in products.items()]
    predict(smooth, texts)
    for hook in hooks:
        hook.remove()
    modules = dict(smooth.encoder.named_modules())
    for name, layer in products.items():
        columns = layer.weight.detach().abs().amax(dim=0).clamp(min=1e-5)
        factors = (maxima[name].clamp(min=1e-5) ** alpha / columns ** (1 - alpha)).clamp(min=1e-5)
        parent, attribute = name.rsplit(".", 1)
        setattr(modules[parent], attribute, _ScaledInput(layer, factors))
    return smooth


def word_table_per_column(path: Path) -> None:
    """Rewrite the ONNX file's word-embedding look-up to an int8 table with one scale per column, dequantized after
    the look-up (Gather, then DequantizeLinear on the last axis). Written here because onnxruntime's quantizers
    give a Gather one scale for the whole table (or 4-bit blocks), and the table's few large columns make that
    scale coarse for every other column; the position and token-type tables (0.8 MB) stay float."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    initializers = {i.name: i for i in model.graph.initializer}
    for index, node in enumerate(model.graph.node):
        if node.op_type == "Gather" and "word_embeddings" in node.input[0] and node.input[0] in initializers:
            table = numpy_helper.to_array(initializers[node.input[0]])
            scales = (np.maximum(np.abs(table).max(axis=0), 1e-12) / 127).astype(np.float32)
            quantized = np.clip(np.round(table / scales), -127, 127).astype(np.int8)
            name, looked_up = node.input[0] + "_int8", node.output[0]
            model.graph.initializer.remove(initializers[node.input[0]])
            model.graph.initializer.extend([numpy_helper.from_array(quantized, name),
                                            numpy_helper.from_array(scales, name + "_scale"),
                                            numpy_helper.from_array(np.zeros(len(scales), np.int8), name + "_zero")])
            node.input[0], node.output[0] = name, looked_up + "_int8"
            model.graph.node.insert(index + 1, helper.make_node(
                "DequantizeLinear", [looked_up + "_int8", name + "_scale", name + "_zero"], [looked_up], axis=-1,
                name=name + "_dequantize"))
            onnx.save(model, str(path))
            return
    raise ValueError(f"{path}: no word-embedding look-up found")


def int8_aware(student, texts: list[str], *, epochs: int, lr: float, batch_size: int = 32, seed: int = 0):
    """A copy of the student fine-tuned so that its int8 form predicts what its float form predicts: on `texts`, the
    float forward keeps the original student's probabilities and the fake-int8 forward learns the float one's (KL
    both; the second reaches the float forward too), so the two move together and stay near where the student was."""
    import copy

    tuned = copy.deepcopy(student)
    tuned.set_precision("fp32")
    targets = predict(tuned, texts).probs  # the float student's, whatever precision `student` scores in
    optimizer = torch.optim.AdamW(tuned.encoder.parameters(), lr=lr, weight_decay=0.0)
    generator = np.random.default_rng(seed)
    tuned.encoder.train()
    for _ in range(epochs):
        order = generator.permutation(len(texts))
        for start in range(0, len(texts), batch_size):
            chosen = order[start : start + batch_size]
            batch, target = [texts[i] for i in chosen], torch.tensor(targets[chosen], dtype=torch.float32)
            floating = torch.log_softmax(tuned.logits(batch), -1)
            with FakeInt8(tuned.encoder):
                integer = torch.log_softmax(tuned.logits(batch), -1)
            loss = (torch.nn.functional.kl_div(floating, target, reduction="batchmean")
                    + torch.nn.functional.kl_div(integer, floating.exp(), reduction="batchmean"))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    tuned.encoder.eval()
    return tuned


def one_task(name: str, args) -> list[dict]:
    task = load_task(name)
    kept, held = split_examples(list(task.train), task.kind, args.validation / len(task.train), 0)  # as bench/ship.py
    held_texts, texts = [e.text for e in held], [e.text for e in task.test]
    student = load_predictor(args.out / name / "student")
    gold = np.array([student.label_names.index(e.label) for e in task.test])
    student.set_precision("fp32")  # the gate's reference, as `tunelab export`
    reference, reference_held = predict(student, texts).probs, predict(student, held_texts).probs
    rows = [{"arm": "torch fp32", "speed": examples_per_s(student, texts, warm_up=True)}]
    own = student.meta.get("precision_record", {}).get("inference", {}).get("precision", "fp32")
    student.set_precision(own)
    rows.append({"arm": f"torch {own} (the student as saved)", "speed": examples_per_s(student, texts, warm_up=True)})
    torch_speed = rows[-1]["speed"]

    with tempfile.TemporaryDirectory() as scratch:
        bench = Workbench(load_predictor(args.out / name / "student"), Path(scratch))

        def measure(arm: str, per_text: bool = False, bench=bench, reference=reference) -> None:
            predictor = bench.predictor()
            probs = (np.concatenate([predict(predictor, [t]).probs for t in texts]) if per_text
                     else predict(predictor, texts).probs)
            figures = parity_figures(reference, probs, gold)
            within = np.abs(reference - probs).max(axis=1) <= PROB_TOLERANCE
            same = reference.argmax(axis=1) == probs.argmax(axis=1)
            rows.append({"arm": arm, "figures": figures, "same_and_within": float(np.mean(same & within)),
                         "speed": None if per_text else examples_per_s(predictor, texts, warm_up=True),
                         "mb": bench.model_mb()})
            console.print(f"  {name}: {arm}: same label {figures['agreement']:.2%}, largest difference "
                          f"{figures['max_prob_difference']:.3f}")

        shutil.copy(bench.graph, bench.folder / "model.onnx")
        measure("ONNX fp32")
        bench.dynamic()
        measure("dynamic int8 (the export's)")
        if args.int8_aware_epochs:
            started = time.perf_counter()
            tuned = int8_aware(student, [e.text for e in kept], epochs=args.int8_aware_epochs, lr=3e-5)
            seconds = time.perf_counter() - started
            tuned_probs = predict(tuned, texts).probs
            accuracy = [float(np.mean(p.argmax(axis=1) == gold)) for p in (reference, tuned_probs)]
            console.print(f"  {name}: int8-aware fine-tuning, {args.int8_aware_epochs} epochs on {len(kept)} texts in "
                          f"{seconds:.0f} s: test accuracy {accuracy[0]:.3f} -> {accuracy[1]:.3f}, same label as the "
                          f"student {np.mean(reference.argmax(axis=1) == tuned_probs.argmax(axis=1)):.2%}")
            (Path(scratch) / "int8-aware").mkdir()
            aware = Workbench(tuned, Path(scratch) / "int8-aware")
            aware.dynamic()
            measure(f"int8-aware fine-tuning ({args.int8_aware_epochs} epochs), then dynamic int8; against the "
                    "fine-tuned student", bench=aware, reference=tuned_probs)
        if args.outliers:
            outlier_arms(student, bench, measure, [e.text for e in kept], (held_texts, reference_held),
                         args.smooth)
        if args.skip_schemes:
            return _finish(rows, name, torch_speed)
        measure("dynamic int8, one text per call", per_text=True)
        started = time.perf_counter()
        damage = {}
        for node in bench.weight_nodes():
            bench.dynamic(nodes_to_quantize=[node])
            damage[node] = float(np.mean(np.abs(predict(bench.predictor(), held_texts).probs - reference_held)))
        ranked = sorted(damage, key=damage.get, reverse=True)
        console.print(f"  {name}: {len(ranked)} weight nodes ranked in {time.perf_counter() - started:.0f} s; "
                      f"most sensitive: {', '.join(ranked[:4])}")
        for k in args.exclude:
            bench.dynamic(nodes_to_exclude=ranked[:k])
            measure(f"dynamic int8, {k} of {len(ranked)} most sensitive in fp32")
        from onnxruntime.quantization import QuantFormat

        for label, quant_format in (("QOperator", QuantFormat.QOperator), ("QDQ", QuantFormat.QDQ)):
            bench.static(student, held_texts, quant_format)
            measure(f"static int8 ({label}, MinMax on the held-out texts)")
        try:
            import onnx_ir  # noqa: F401  (MatMulNBits' quantizer imports it)
        except ImportError:
            rows.append({"arm": "weight-only 8-bit, blocks of 32: skipped (the onnx-ir package is not installed)"})
        else:
            bench.weight_only()
            measure("weight-only 8-bit, blocks of 32 (MatMulNBits)")
    return _finish(rows, name, torch_speed)


def per_token_int8(source: Path, target: Path, keep_float: tuple[str, ...] = ()) -> None:
    """Rewrite every product of a float graph with a constant weight (MatMul) as int8 with one activation range per
    token: each token's row gets its own uint8 scale and zero point, the weight int8 per column, and the zero points
    come out through the weight's column sums: y = s * (q @ W8 * w_scale - z * colsum(W8 * w_scale)).
    Written here because onnxruntime's dynamic quantization has one range per tensor, and its MatMulInteger refuses
    a zero point per row; this is built from standard operators (about 17 a product), which is its cost."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    initializers = {i.name: i for i in model.graph.initializer}
    model.graph.initializer.extend([numpy_helper.from_array(np.array(value, np.float32), name) for name, value in
                                    (("per_token_zero", 0.0), ("per_token_255", 255.0), ("per_token_tiny", 1e-12))])
    nodes = []
    for node in model.graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and node.name not in keep_float else None
        if weight is None or len(weight.dims) != 2:
            nodes.append(node)
            continue
        values = numpy_helper.to_array(weight)
        w_scale = (np.maximum(np.abs(values).max(axis=0), 1e-12) / 127).astype(np.float32)
        w8 = np.clip(np.round(values / w_scale), -127, 127).astype(np.int8)
        prefix = node.name.replace("/", "_") + "_per_token"
        model.graph.initializer.remove(weight)
        model.graph.initializer.extend([numpy_helper.from_array(w8, prefix + "_w8"),
                                        numpy_helper.from_array(w_scale, prefix + "_w_scale"),
                                        numpy_helper.from_array(w8.astype(np.float32).sum(axis=0) * w_scale,
                                                                prefix + "_colsum")])

        def op(kind, inputs, suffix, **attributes):
            nodes.append(helper.make_node(kind, inputs, [prefix + suffix], name=prefix + suffix, **attributes))
            return prefix + suffix

        x = node.input[0]
        high = op("Max", [op("ReduceMax", [x], "_max", axes=[-1], keepdims=1), "per_token_zero"], "_high")
        low = op("Min", [op("ReduceMin", [x], "_min", axes=[-1], keepdims=1), "per_token_zero"], "_low")
        scale = op("Max", [op("Div", [op("Sub", [high, low], "_range"), "per_token_255"], "_scale0"),
                           "per_token_tiny"], "_scale")
        zero = op("Round", [op("Div", [op("Neg", [low], "_minus_low"), scale], "_zero0")], "_zero")
        steps = op("Add", [op("Round", [op("Div", [x, scale], "_steps0")], "_steps1"), zero], "_steps")
        q = op("Cast", [op("Clip", [steps, "per_token_zero", "per_token_255"], "_clipped")], "_q",
               to=TensorProto.UINT8)
        product = op("Cast", [op("MatMulInteger", [q, prefix + "_w8"], "_int32")], "_product", to=TensorProto.FLOAT)
        centred = op("Sub", [op("Mul", [product, prefix + "_w_scale"], "_scaled"),
                             op("Mul", [zero, prefix + "_colsum"], "_offset")], "_centred")
        nodes.append(helper.make_node("Mul", [centred, scale], [node.output[0]], name=prefix + "_out"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(target))


def outlier_arms(student, bench: Workbench, measure, calibration: list[str], held: tuple[list[str], np.ndarray],
                 alphas) -> None:
    """The arms aimed at the activations' outlier channels: the word table per column, SmoothQuant's scaling (its
    maxima from the student's training texts) and one activation range per token, alone and together; then, for the
    first alpha, the fewest most damaging products left fp32 for the held-out texts `held` (texts, the student's
    probabilities) to pass the gate (each product's damage: its largest change on them, quantized alone)."""
    folder = bench.folder / "model.onnx"
    bench.dynamic(op_types_to_quantize=["MatMul", "Gemm"])
    word_table_per_column(folder)
    measure("dynamic int8, the word table int8 per column")
    per_token_int8(bench.graph, folder)
    word_table_per_column(folder)
    measure("per-token int8, word table per column")
    for alpha in alphas:
        scratch = bench.scratch / f"smooth-{alpha}"
        scratch.mkdir()
        smooth = Workbench(smoothed(student, calibration, alpha), scratch)
        smooth.dynamic(op_types_to_quantize=["MatMul", "Gemm"])
        word_table_per_column(smooth.folder / "model.onnx")
        measure(f"SmoothQuant (alpha {alpha}), dynamic int8, word table per column", bench=smooth)
        per_token_int8(smooth.graph, smooth.folder / "model.onnx")
        word_table_per_column(smooth.folder / "model.onnx")
        measure(f"SmoothQuant (alpha {alpha}), per-token int8, word table per column", bench=smooth)
        if alpha != alphas[0]:
            continue
        texts, reference = held
        products = [n for n in smooth.weight_nodes() if "MatMul" in n]
        damage = {}
        for product in products:
            per_token_int8(smooth.graph, smooth.folder / "model.onnx", keep_float=tuple(set(products) - {product}))
            damage[product] = float(np.abs(predict(smooth.predictor(), texts).probs - reference).max())
        ranked = sorted(products, key=damage.get, reverse=True)
        for k in range(len(ranked) + 1):
            per_token_int8(smooth.graph, smooth.folder / "model.onnx", keep_float=tuple(ranked[:k]))
            word_table_per_column(smooth.folder / "model.onnx")
            if parity_figures(reference, predict(smooth.predictor(), texts).probs, None)["passes"]:
                break
        measure(f"SmoothQuant (alpha {alpha}), per-token int8, word table per column, {k} of {len(ranked)} products "
                "fp32 (the fewest that pass on the held-out texts)", bench=smooth)


def _finish(rows: list[dict], name: str, torch_speed: float) -> list[dict]:
    for row in rows:
        row.update(task=name, vs_torch=row["speed"] / torch_speed if row.get("speed") else None)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="vader,subjectivity")
    parser.add_argument("--validation", type=int, default=100, help="as bench/ship.py's")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ship"), help="where bench/ship.py wrote")
    parser.add_argument("--exclude", default="2,4,8,16,24", help="k values: the k most sensitive nodes left fp32")
    parser.add_argument("--int8-aware-epochs", type=int, default=3, help="0: no int8-aware fine-tuning arm")
    parser.add_argument("--outliers", action="store_true",
                        help="the arms aimed at outlier channels: word table per column, SmoothQuant, per-token ranges")
    parser.add_argument("--smooth", default="0.5,0.85", help="SmoothQuant migration strengths (alpha) to try")
    parser.add_argument("--skip-schemes", action="store_true",
                        help="only the torch rows, the export's dynamic int8 and the int8-aware arm")
    args = parser.parse_args()
    args.exclude = [int(k) for k in args.exclude.split(",") if k]
    args.smooth = [float(a) for a in args.smooth.split(",") if a]
    for name in args.tasks.split(","):
        if not (args.out / name / "student").is_dir():
            raise SystemExit(f"{args.out / name / 'student'}: no student; run python bench/ship.py --out {args.out}")
    results = [row for name in args.tasks.split(",") for row in one_task(name, args)]
    table = Table(title=f"int8 students against the gate (test split; same label >= 99.5%, probabilities within "
                        f"{PROB_TOLERANCE}, ECE drift <= 0.01)")
    for column in ("task", "arm", "same label", f"same, within {PROB_TOLERANCE}", "largest difference",
                   "ECE drift", "examples/s", "vs torch as saved", "model MB", "gate"):
        table.add_column(column)
    for row in results:
        figures = row.get("figures")
        if figures is None:
            table.add_row(row["task"], row["arm"], *["-"] * 4, f"{row['speed']:,.0f}" if row.get("speed") else "-",
                          f"{row['vs_torch']:.2f}x" if row.get("vs_torch") else "-", "-", "-")
            continue
        table.add_row(row["task"], row["arm"], f"{figures['agreement']:.2%}", f"{row['same_and_within']:.2%}",
                      f"{figures['max_prob_difference']:.3f}", f"{figures['ece_drift']:.4f}",
                      f"{row['speed']:,.0f}" if row["speed"] else "-",
                      f"{row['vs_torch']:.2f}x" if row["vs_torch"] else "-",
                      f"{row['mb']:.1f}" if row["mb"] else "-",
                      "passed" if figures["passes"] else "refused")
    console.print(table)


if __name__ == "__main__":
    main()
