"""The repository root on the import path (erc_minimal, test_erc_minimal), the smol fixture, and one line in the
summary when the worked patches need regenerating."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import erc_minimal as E  # noqa: E402
from helpers import STALE_PATCHES, load_tool, patches_are_current  # noqa: E402


@pytest.fixture
def smol(monkeypatch):
    """tools/smol.py, installed in erc_minimal for one test and taken out after it."""
    monkeypatch.setattr(E, "PRESETS", dict(E.PRESETS))
    monkeypatch.setattr(E, "load_model_and_tokenizer", E.load_model_and_tokenizer)
    monkeypatch.setattr(E, "read_dataset", E.read_dataset)
    module = load_tool("smol")
    module.install()
    return module


def pytest_terminal_summary(terminalreporter):
    if not patches_are_current():
        terminalreporter.write_line(f"the patch tests skipped: {STALE_PATCHES}", yellow=True)
