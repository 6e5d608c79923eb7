"""Every example in the README and the topic pages under docs/ runs here, and every documented flag exists.

The examples run as written, in page order and in one working folder per page, on tiny twins of the bundled models:
the names `smollm2` and `gemma3-270m` resolve to tiny random causal LMs and the MiniLM encoder to a tiny BERT,
all with one byte-level tokenizer that reads any text. Files a page names as the reader's own (`my.csv`,
`queries.txt`, ...) are written first with a few rows. `tunelab serve` builds its app as it would serve it, and the
page's `curl` lines are sent to that app. Not run, and said why: the README's `make` lines (the set-up itself: CI
runs `make test`, and `make run` is timed in docs/BENCHMARKS.md) and blocks fenced as `text` (outputs, and the
two-machine launch that needs a second host). docs/BENCHMARKS.md and docs/DESIGN.md hold measurement commands,
not examples: their `tunelab` lines are checked against `--help` only.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import tunelab
from helpers import run_cli
from tunelab.cli.app import app
from tunelab.models import make_model

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md")
                                     if p.name not in ("BENCHMARKS.md", "DESIGN.md"))]
REFERENCE_PAGES = [ROOT / "docs" / "BENCHMARKS.md", ROOT / "docs" / "DESIGN.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NOT_RUN = {"make": "the set-up commands: CI runs `make test`, `make run` is timed in docs/BENCHMARKS.md"}

TWIN_LAYERS = 2  # SmolLM2 has 30: layer numbers in an example are scaled to the twin's depth (twin_args)
POSITIVE = ["good", "great", "lovely", "superb", "happy", "kind", "bright", "warm", "calm", "brave"]
NEGATIVE = ["bad", "awful", "nasty", "grim", "sad", "cruel", "dull", "cold", "harsh", "vile"]


def fenced(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == language]


def command_lines(block: str) -> list[str]:
    """A block's lines with continuation lines joined."""
    return block.replace("\\\n", " ").splitlines()


def shell_commands(block: str) -> list[list[str]]:
    """A shell block's commands as argument lists: continuation lines joined, comments dropped."""
    return [words for line in command_lines(block) if (words := shlex.split(line, comments=True))]


def tunelab_args(words: list[str]) -> list[str] | None:
    """The tunelab arguments of a command line (shown after a `$` prompt or not), whichever way it starts tunelab."""
    words = words[1:] if words[:1] == ["$"] else words
    if words[:1] == ["tunelab"]:
        return words[1:]
    if "tunelab.cli" in words:  # torchrun / accelerate launch ... -m tunelab.cli ARGS
        return words[words.index("tunelab.cli") + 1:]
    return None


# ----------------------------------------------------------------------------------------------------------------
# Tiny twins


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """A byte-level tokenizer, two tiny causal LMs and a tiny encoder, saved as folders."""
    root = tmp_path_factory.mktemp("twins")
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # trained on the built-in tasks' own texts: a few tokens a word, as a real tokenizer reads them
    vader, sotu = tunelab.load_task("vader"), tunelab.load_task("sotu-party")
    corpus = [e.text for e in vader.train] + list(vader.unlabeled) + [e.text for e in list(sotu.train)[:150]]
    backend.train_from_iterator(corpus + POSITIVE + NEGATIVE, trainers.BpeTrainer(
        vocab_size=3000, special_tokens=["<unk>", "<pad>", "<eos>", "[CLS]", "[SEP]", "[MASK]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<eos>", cls_token="[CLS]", sep_token="[SEP]",
                                        mask_token="[MASK]")
    folders = {}
    for name, seed, layers in (("smollm2", 0, TWIN_LAYERS), ("gemma3-270m", 1, TWIN_LAYERS - 1)):
        torch.manual_seed(seed)
        lm = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=layers,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048, pad_token_id=1,
            eos_token_id=2, bos_token_id=None))
        folders[name] = root / name
        lm.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    torch.manual_seed(0)
    encoder = root / "encoder"
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=17, max_position_embeddings=600, pad_token_id=1)).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    return {"models": folders, "encoder": encoder}


@pytest.fixture
def twin_world(twins, monkeypatch, tmp_path):
    """The bundled names resolve to the tiny twins in this process; the working folder is a fresh one."""
    import tunelab.models as tunelab_models

    loaded = {}
    for name, folder in twins["models"].items():
        for precision in ("fp32", "bf16"):
            model = tunelab_models.load_model(folder, precision=precision)
            loaded[name if precision == "fp32" else f"{name}@bf16"] = make_model(
                model.lm, model.tokenizer, name=name, source=name, device=model.device)
    monkeypatch.setattr(tunelab_models, "_LOADED", {**tunelab_models._LOADED, **loaded})
    monkeypatch.setattr("tunelab.ladder.axis.release", lambda model: None)  # the twins stay the bundled names
    monkeypatch.setattr("tunelab.models.bundled_minilm_path", lambda: twins["encoder"])
    monkeypatch.setattr("tunelab.rungs.students.bundled_minilm_path", lambda: twins["encoder"])
    served = []
    monkeypatch.setattr("uvicorn.run", lambda application, **kwargs: served.append(application))
    monkeypatch.chdir(tmp_path)
    _readers_files(tmp_path)
    return {"served": served, "models": twins["models"], "folder": tmp_path}


def _readers_files(folder: Path) -> None:
    """The files the pages name as the reader's own, with a few rows each."""
    rows = [{"text": w, "label": "positive", "dialect": "a" if i % 2 else "b"} for i, w in enumerate(POSITIVE)] + [
        {"text": w, "label": "negative", "dialect": "a" if i % 2 else "b"} for i, w in enumerate(NEGATIVE)]
    jsonl = "".join(json.dumps(r) + "\n" for r in rows)
    csv = "text,label,dialect\n" + "".join(f"{r['text']},{r['label']},{r['dialect']}\n" for r in rows)
    (folder / "my.jsonl").write_text(jsonl)
    (folder / "held.jsonl").write_text(jsonl)
    (folder / "my.csv").write_text(csv)
    (folder / "my_test.csv").write_text(csv)
    (folder / "mails.csv").write_text(csv)
    (folder / "tickets.csv").write_text(csv)
    (folder / "reviews.csv").write_text("review,verdict\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    tickets = [{"subject": w, "body": f"{w} and {v}", "label": label} for words, label in
               ((POSITIVE, "positive"), (NEGATIVE, "negative")) for w, v in zip(words, reversed(words))]
    (folder / "tickets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tickets))
    topics = [{"text": f"{w} {v}", "label": sorted({"positive" if w in POSITIVE else "negative",
                                                    "positive" if v in POSITIVE else "negative"})}
              for w, v in zip(POSITIVE + NEGATIVE, NEGATIVE[3:] + POSITIVE + NEGATIVE[:3])]
    (folder / "news.jsonl").write_text("".join(json.dumps(r) + "\n" for r in topics))
    (folder / "news.csv").write_text("text,label\n" + "".join(f"{r['text']},{'|'.join(r['label'])}\n" for r in topics))
    (folder / "queries.txt").write_text("".join(f"{w}\n" for w in ["wonderful", *POSITIVE[:4], *NEGATIVE[:4]]))
    (folder / "words.txt").write_text("".join(f"{w}\n" for w in POSITIVE + NEGATIVE))
    (folder / "big.jsonl").write_text("".join(json.dumps({"text": w}) + "\n" for w in POSITIVE + NEGATIVE))
    (folder / "concepts.jsonl").write_text(json.dumps({"id": "EUR", "names": ["euro"]}) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Running a page


def _curl(words: list[str], application) -> None:
    method, data, headers, url = "GET", None, {}, None
    rest = iter(words[1:])
    for word in rest:
        if word == "-X":
            method = next(rest)
        elif word == "-H":
            key, value = next(rest).split(":", 1)
            headers[key.strip()] = value.strip()
        elif word == "-d":
            data, method = next(rest), "POST" if method == "GET" else method
        else:
            url = word
    assert application is not None, f"{shlex.join(words)}: no `tunelab serve` before it on the page"
    path = "/" + url.split("/", 1)[1]
    response = TestClient(application).request(method, path, content=data, headers=headers)
    assert response.status_code == 200, (shlex.join(words), response.status_code, response.text)


def _launcher(words: list[str], world: dict) -> None:
    """torchrun, accelerate launch and example scripts start other processes: the twin's folder is named."""
    args = [sys.executable, "-m", *words[1:]] if words[0] in ("torchrun", "accelerate") else [
        sys.executable, *(["-m", "tunelab.cli"] if words[0] == "tunelab" else []), *words[1:]]
    if words[0] == "python":  # an example script of the repository's
        args[1] = str(ROOT / words[1])
    if words[0] == "torchrun":
        args[2:2] = ["torch.distributed.run", "--standalone"]
    elif words[0] == "accelerate":
        args[2:3] = ["accelerate.commands.launch"]
    args += ["--model", str(world["models"]["smollm2"])]
    env = {**os.environ, "TUNELAB_DIST_TIMEOUT_S": "60", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, cwd=world["folder"])
    assert done.returncode == 0, (shlex.join(words), done.stderr[-2000:])


def twin_args(args: list[str]) -> list[str]:
    """Layer numbers written for SmolLM2's 30 layers (`--layers 8,15`, `--student pruned:10`), scaled to the twin."""
    def scaled(numbers: str) -> str:
        return ",".join(sorted({str(min(TWIN_LAYERS - 1, max(1, int(n) * TWIN_LAYERS // 30)))
                                for n in numbers.split(",")}, key=int))

    out = list(args)
    for i, arg in enumerate(out):
        if i and out[i - 1] == "--layers":
            out[i] = scaled(arg)
        elif arg.startswith("pruned:"):
            out[i] = "pruned:" + scaled(arg.split(":", 1)[1])
    return out


def _refused_by_the_int8_gate(words: list[str], result) -> bool:
    """The int8 export of the twin student may be refused by the parity gate, as the page says it would be: a random
    one-layer encoder's probabilities sit near 0.5, where int8 rounding flips labels. Refused means exit 2, the
    figures in the message, and no output folder."""
    if words[1:2] != ["export"] or "int8" not in words or result.exit_code != 2:
        return False
    assert '"passes": false' in result.output, result.output
    assert not Path(words[words.index("--out") + 1]).exists()
    return True


def run_page(page: Path, world: dict) -> int:
    """Every shell and Python block of `page`, in order; returns how many commands ran."""
    count = 0
    for language, body in FENCE.findall(page.read_text()):
        if language == "python":
            exec(compile(body, f"{page.name} example", "exec"), {"__name__": "__doc_example__"})
            count += 1
            continue
        if language != "sh":
            continue
        for words in shell_commands(body):
            if words[0] in NOT_RUN:
                continue
            if words[0] == "curl":
                _curl(words, world["served"][-1] if world["served"] else None)
            elif words[0] == "tunelab" and "--nproc" in words:  # its processes load the model themselves
                _launcher(words, world)
            elif words[0] == "tunelab":
                result = run_cli(*twin_args(words[1:]))
                if _refused_by_the_int8_gate(words, result):
                    continue
                assert result.exit_code == 0, (shlex.join(words), result.output[-3000:])
            else:
                _launcher(words, world)
            count += 1
    return count


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_example_on_the_page_runs(page, twin_world):
    ran = run_page(page, twin_world)
    assert ran > 0 or page.name == "index.md", f"{page.name}: no example ran"


# ----------------------------------------------------------------------------------------------------------------
# Flags and links


def _help_flags(command: tuple[str, ...]) -> set[str]:
    result = run_cli(*command, "--help")
    assert result.exit_code == 0, (command, result.output)
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", result.output))


def documented_commands() -> list[tuple[Path, list[str]]]:
    found = []
    for page in PAGES + REFERENCE_PAGES:
        text = page.read_text()
        lines = [line for _, body in FENCE.findall(text) for line in command_lines(body)]
        lines += re.findall(r"`(tunelab [^`]+)`", text)
        found += [(page, args) for line in lines if _splits(line)
                  and (words := shlex.split(line, comments=True)) and (args := tunelab_args(words))]
    return found


def _splits(line: str) -> bool:
    try:
        shlex.split(line)
        return True
    except ValueError:
        return False


def test_every_documented_flag_is_in_the_commands_help():
    commands = {c for c in app.registered_commands}
    names = {c.name or c.callback.__name__.replace("_", "-") for c in commands}
    helps: dict[tuple[str, ...], set[str]] = {}
    checked = 0
    for page, args in documented_commands():
        head = [a for a in args if not a.startswith("-")][:2]
        if not head or head[0] not in names | {"store"}:
            continue
        command = tuple(head[:2]) if head[0] == "store" else (head[0],)
        flags = helps.setdefault(command, _help_flags(command) | {"--help"})
        for flag in (a.split("=", 1)[0] for a in args if a.startswith("--")):
            assert flag in flags, f"{page.name}: `tunelab {' '.join(command)} {flag}` is not in its --help"
            checked += 1
    assert checked > 100  # the pages document well over a hundred flags; a parser that finds none must fail


def test_every_topic_page_is_linked_from_the_readme_and_the_site():
    readme = (ROOT / "README.md").read_text()
    site = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme or page.name == "index.md", page.name
        assert f" {page.name}" in site, page.name
    assert len(readme.splitlines()) < 150


def test_the_site_builds(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "models" / "index.html").is_file()


def test_docs_say_nothing_of_how_the_project_is_made():
    for page in PAGES + REFERENCE_PAGES:
        text = page.read_text()
        for word in (r"\bsession\b", r"\bround\b", r"issue #", r"\bmachine [A-D]\b"):
            assert not re.search(word, text, re.I), (page.name, word)
