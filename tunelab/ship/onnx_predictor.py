"""An exported encoder student or embed baseline, run by onnxruntime: a predictor that needs neither torch nor
transformers.

The folder holds `model.onnx` (fp32, or int8 weights), `tokenizer.json` (read by the `tokenizers` library),
`tunelab.json` (labels, the length policy, the parity figures the export passed) and, for an embed baseline,
`head.json` (its logistic or ridge regression's numbers, applied here after the windows' embeddings are
averaged). It reads texts exactly as the torch predictor does (scoring/length.py: whole texts in windows whose
outputs are averaged, or head + tail), so eval, predict, serve and bias accept it like any predictor; serving it
imports no torch (a test checks).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from tunelab.errors import ConfigError, ModelError
from tunelab.predictor import ENCODER_BATCH, Predictions
from tunelab.scoring.length import fit_texts, special_frame, window_spans
from tunelab.tasks.fields import encoder_texts

ENCODER_SPECIAL_TOKENS = 2  # [CLS] and [SEP], as rungs/students.py
ENCODER_OVERLAP = 32
HEAD_FILE = "head.json"  # an exported embed baseline's linear head (coefficients, intercepts, classes)



def require_onnx() -> None:
    """The onnx extra (`make test` installs it; `make run` does not need it), or one line saying so."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"ONNX export and serving need {' and '.join(missing)}: pip install '.[onnx]' in "
                          "tunelab's folder (or run `make test`, which installs it)")

class _Encoded:
    def __init__(self, input_ids, offset_mapping=None):
        self.input_ids, self._offsets = input_ids, offset_mapping

    def __getitem__(self, key):
        return {"offset_mapping": self._offsets, "input_ids": self.input_ids}[key]


class TokenizerAdapter:
    """The `tokenizers` library's Tokenizer, called the way scoring/length.py calls a transformers tokenizer (so the
    one length policy serves both)."""

    def __init__(self, backend):
        self.backend = backend
        self.backend.no_padding()
        self.backend.no_truncation()

    def __call__(self, texts, add_special_tokens: bool = True, return_offsets_mapping: bool = False):
        single = isinstance(texts, str)
        encodings = self.backend.encode_batch([texts] if single else list(texts), add_special_tokens=add_special_tokens)
        ids = [e.ids for e in encodings]
        offsets = [e.offsets for e in encodings] if return_offsets_mapping else None
        return _Encoded(ids[0] if single else ids, (offsets[0] if single else offsets) if offsets else None)


class OnnxPredictor:
    """The exported student: onnxruntime on CPU (or the GPU provider when onnxruntime has one)."""

    rung = "onnx"
    min_batch_size = ENCODER_BATCH  # as the torch student's (dynamic int8 on vader words: 2,805 -> 3,897 examples/s)

    def __init__(self, directory: Path, payload: dict):
        require_onnx()
        import onnxruntime
        from tokenizers import Tokenizer

        self.directory, self.payload = Path(directory), payload
        self.kind, self.label_names = payload["kind"], tuple(payload["labels"])
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(self.directory / "model.onnx"), options,
                                                    providers=onnxruntime.get_available_providers())
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = TokenizerAdapter(Tokenizer.from_file(str(self.directory / "tokenizer.json")))
        self.pad_id = int(payload["pad_id"])
        self.max_length, self.long_texts = int(payload["max_length"]), payload["long_texts"]
        self.overlap, self.output = int(payload.get("overlap", ENCODER_OVERLAP)), payload.get("output", "logits")
        self.head = (json.loads((self.directory / HEAD_FILE).read_text(encoding="utf-8"))
                     if self.output == "vectors" else None)
        self.thresholds = payload.get("thresholds")  # several labels an example: the source predictor's

    @property
    def params_total(self) -> int:
        return int(self.payload["params_total"])

    @property
    def params_trainable(self) -> int:
        return int(self.payload["params_trainable"])

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256((self.directory / "model.onnx").read_bytes())
        if self.head is not None:
            digest.update(json.dumps(self.head, sort_keys=True).encode())
        digest.update(json.dumps([self.kind, list(self.label_names), self.max_length, self.long_texts,
                                  self.payload.get("quantize")]
                                 + ([self.thresholds] if self.thresholds is not None else [])).encode())
        return digest.hexdigest()[:16]

    def describe_model(self) -> dict:
        return {"model": f"ONNX export of {self.payload['source']['spec']} ({self.payload.get('quantize') or 'fp32'}"
                         f", onnxruntime)", "exported_from": self.payload["source"]["fingerprint"],
                "parity": self.payload.get("parity")}

    def _encoder_texts(self, texts: list[str]) -> list[str]:
        return encoder_texts(texts, tuple(self.payload.get("text_fields", ())), self.payload.get("separator"))

    def _windows(self, texts: list[str]) -> list[list[list[int]]]:
        texts = self._encoder_texts(texts)
        before, after = special_frame(self.tokenizer)
        room = max(1, self.max_length - ENCODER_SPECIAL_TOKENS)
        if self.long_texts != "windows":
            cut = [text for text, _ in fit_texts(self.tokenizer, texts, room)]
            return [[before + row[:room] + after] for row in self.tokenizer(cut, add_special_tokens=False).input_ids]
        stride = max(1, room - min(self.overlap, room // 4))
        return [[before + row[a:b] + after for a, b in window_spans(len(row), room, stride)]
                for row in self.tokenizer(texts, add_special_tokens=False).input_ids]

    def count_truncated(self, texts: list[str]) -> int:
        if self.long_texts == "windows":
            return 0
        return sum(cut for _, cut in fit_texts(self.tokenizer, self._encoder_texts(texts),
                                               self.max_length - ENCODER_SPECIAL_TOKENS))

    def count_windows(self, texts: list[str]) -> list[int]:
        return [len(w) for w in self._windows(texts)]

    def logits(self, texts: list[str]) -> np.ndarray:
        """The student's logits averaged over each text's windows; for an embed baseline, its head's scores of the
        windows' embeddings averaged and normalised again (as rungs/baseline.py reads long texts)."""
        outputs = self._averaged(texts)
        if self.head is None:
            return outputs
        vectors = outputs / np.maximum(np.linalg.norm(outputs, axis=1, keepdims=True), 1e-12)
        return vectors @ np.asarray(self.head["coef"]).T + np.asarray(self.head["intercept"])

    def _averaged(self, texts: list[str]) -> np.ndarray:
        per_text = self._windows(texts)
        rows = [ids for windows in per_text for ids in windows]
        width = max(map(len, rows))
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = row, 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        out = self.session.run([self.output], {k: v for k, v in feed.items() if k in self.inputs})[0]
        owner = np.repeat(np.arange(len(texts)), [len(w) for w in per_text])
        summed = np.zeros((len(texts), out.shape[1]))
        np.add.at(summed, owner, out)
        return summed / np.bincount(owner, minlength=len(texts))[:, None]

    def predict_batch(self, texts: list[str]) -> Predictions:
        logits = self.logits(texts)
        if self.head is not None:
            return self._head_predictions(logits)
        if self.kind == "multilabel":  # one sigmoid per label
            return self._label_scores(logits)
        if self.kind == "classification":
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            return Predictions("classification", self.label_names, probs=shifted / shifted.sum(axis=1, keepdims=True))
        return Predictions("regression", values=logits[:, 0])

    def _head_predictions(self, scores: np.ndarray) -> Predictions:
        """What scikit-learn's fitted model gives for these scores: logistic regression's probabilities (one score:
        the second class's log-odds), in the predictor's label order; ridge's values, clipped to the training range."""
        if self.kind == "regression":
            low, high = self.head["value_range"]
            return Predictions("regression", values=np.clip(scores[:, 0], low, high))
        if self.kind == "multilabel":  # the per-label logistic regressions, columns in label order
            return self._label_scores(scores)
        if scores.shape[1] == 1:
            second = 1 / (1 + np.exp(-scores[:, 0]))
            probs = np.stack([1 - second, second], axis=1)
        else:
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            probs = shifted / shifted.sum(axis=1, keepdims=True)
        order = [self.head["classes"].index(label) for label in self.label_names]
        return Predictions("classification", self.label_names, probs=probs[:, order])

    def _label_scores(self, logits: np.ndarray) -> Predictions:
        return Predictions("multilabel", self.label_names, probs=1 / (1 + np.exp(-logits)),
                           thresholds=np.asarray(self.thresholds))

    def save(self, directory: Path) -> None:
        raise ModelError("an ONNX predictor is written by `tunelab export`, not saved again")

    @classmethod
    def load(cls, directory: Path, payload: dict) -> OnnxPredictor:
        return cls(directory, payload)
