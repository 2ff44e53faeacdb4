"""README's Python blocks run as written: the Python API on a trained run dir, and your own
`model.fit` on a converted data dir, in a folder laid out as README's quickstart leaves it
(runs/mine, data/mine, photos/dog.jpg)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, cli_env, encode_image


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def test_readme_has_the_api_and_the_fit_examples():
    blocks = _python_blocks()
    assert any("Captioner.load(" in b and ".caption(" in b for b in blocks)
    assert any("model.fit(" in b and "caption_loss()" in b for b in blocks)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_block_runs(index, trained_run, tmp_path):
    shutil.copytree(trained_run.run_dir, tmp_path / "runs" / "mine")
    shutil.copytree(trained_run.data_dir, tmp_path / "data" / "mine")
    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(0)
    (tmp_path / "photos" / "dog.jpg").write_bytes(encode_image(rng.integers(0, 256, (48, 64, 3), np.uint8), "JPEG"))
    code = _python_blocks()[index]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if "Captioner" in code:
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 4 and lines[0].startswith("photos/dog.jpg [") and lines[1].startswith("None ["), lines
    else:
        assert re.search(r"Epoch 2/2", proc.stdout), proc.stdout[-2000:]
