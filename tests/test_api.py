"""The public Python API: every exported name works, none is shadowed by a module, and the README's session runs."""

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import tunelab

README = Path(__file__).parents[1] / "README.md"


def test_every_exported_name_is_callable_after_every_module_is_imported():
    # importing every module first is what used to turn tunelab.evaluate into a module
    code = ("import importlib, pkgutil, tunelab\n"
            "for m in pkgutil.walk_packages(tunelab.__path__, 'tunelab.'):\n"
            "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
            "bad = [n for n in tunelab.__all__ if n != '__version__'\n"
            "       and not (callable(getattr(tunelab, n)) or isinstance(getattr(tunelab, n), type))]\n"
            "print(bad)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_no_exported_name_is_a_module_name():
    modules = {m.name for m in pkgutil.iter_modules(tunelab.__path__)}
    assert modules & set(tunelab.__all__) == set()
    assert {"rungs", "offline", "generation", "measure", "report", "cli"} <= modules


def test_the_readme_python_session_runs(tiny_model, tiny_task, tiny_encoder_dir, tmp_path, monkeypatch):
    """The README's "From Python" block, run as written, on tiny models and a tiny task instead of SmolLM2, MiniLM
    and vader."""
    block = re.search(r"## From Python\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tunelab, "load_model", lambda *args, **kwargs: tiny_model)
    monkeypatch.setattr(tunelab, "load_task", lambda *args, **kwargs: tiny_task)
    monkeypatch.setattr("tunelab.rungs.students.bundled_minilm_path", lambda: tiny_encoder_dir)
    printed = []
    exec(compile(block, str(README), "exec"), {"print": lambda *values: printed.append(values)})
    assert len(printed) == 3
    accuracy, params_total, params_trainable = printed[1]
    assert 0.0 <= accuracy <= 1.0 and params_total == tiny_model.params_total and 0 < params_trainable < params_total
    assert "x the teacher's speed" in printed[2][0]
    assert (tmp_path / "runs" / "py-lora" / "tunelab.json").is_file()
    assert (tmp_path / "runs" / "py-student" / "tunelab.json").is_file()
