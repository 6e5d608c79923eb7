"""The README's result table is the script's output from the stored report (scripts/readme_table.py)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "scripts" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_is_the_stored_reports():
    script = _script()
    readme = (ROOT / "README.md").read_text()
    begin, end = readme.index(script.BEGIN) + len(script.BEGIN), readme.index(script.END)
    expected = script.table(json.loads(script.STORED.read_text()))
    assert readme[begin:end].strip() == expected.strip()
    rows = [line for line in expected.splitlines() if line.startswith("| ")]
    assert len(rows) == len(json.loads(script.STORED.read_text())["rungs"]) + 1  # the header and a row per rung
