"""What the tests in tests/ share: the repository's scripts imported as modules, and the worked patches applied."""
import hashlib
import importlib.util
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STALE_PATCHES = ("erc_minimal.py differs from the file patches/*.patch were made against; regenerate them: "
                 "python dev/regenerate_patches.py")


def comparable(rows):
    """metrics.jsonl records without their timings, which differ between any two runs."""
    return [{k: v for k, v in r.items() if not k.endswith("_time")} for r in rows]


def load_script(path):
    """A script of this repository (a tool, a lab, a patched copy of erc_minimal.py) imported as a module."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_tool(name):
    """tools/NAME.py as a module."""
    return load_script(str(ROOT / "tools" / f"{name}.py"))


def load_lab(name):
    """labs/NAME/NAME.py as a module."""
    return load_script(str(ROOT / "labs" / name / f"{name}.py"))


def patches_are_current():
    base = (ROOT / "patches" / "BASE.sha256").read_text().split()[0]
    return hashlib.sha256((ROOT / "erc_minimal.py").read_bytes()).hexdigest() == base


def patched_script(tmp_path, name):
    """erc_minimal.py with patches/NAME.patch applied by `git apply`, imported as a fresh module. Where
    erc_minimal.py is not the file the patches were made against (a fork), the test skips (the suite's summary
    says once how to regenerate them); under CI it fails, so the shipped patches never rot."""
    if not patches_are_current():
        pytest.fail(STALE_PATCHES) if os.environ.get("CI") == "true" else pytest.skip(STALE_PATCHES)
    folder = Path(tempfile.mkdtemp(prefix=name, dir=tmp_path))
    (folder / "erc_minimal.py").write_text((ROOT / "erc_minimal.py").read_text())
    run = subprocess.run(["git", "apply", str(ROOT / "patches" / f"{name}.patch")], cwd=folder, capture_output=True,
                         text=True)
    assert run.returncode == 0, f"{name}.patch no longer applies: {run.stderr}"
    return load_script(str(folder / "erc_minimal.py"))


def readme_gpu_commands():
    """The README's GPU block as {card size: flags after `python erc_minimal.py`, --out left out}."""
    block = (ROOT / "README.md").read_text().split("## On one CUDA GPU", 1)[1].split("```bash", 3)[2].split("```")[0]
    commands = {}
    for line in block.replace("\\\n", " ").splitlines():
        command, _, comment = line.partition("#")
        flags = [f for f in command.split()[2:] if f]
        flags = [f for i, f in enumerate(flags) if f != "--out" and (i == 0 or flags[i - 1] != "--out")]
        for size in (s.strip() for s in comment.split(":")[0].replace(" or ", ",").replace(" GB", "").split(",")):
            commands[f"{size} GB"] = flags
    assert set(commands) >= {"80 GB", "48 GB", "24 GB", "16 GB"}, commands
    return commands
