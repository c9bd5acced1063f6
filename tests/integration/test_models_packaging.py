"""The shipped model travels inside the wheel: load_embedder() works from an installed copy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_carries_the_default_model(tmp_path: Path) -> None:
    src = tmp_path / "src"
    # Copy only what a build needs (not .git, not caches) so the test is quick.
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", "build", ".pytest_cache", "var"
        ),
        symlinks=True,
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("voxgate-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "voxgate/models/ge2e-int8.yaml" in names
        assert "voxgate/models/ge2e-resemblyzer-int8.onnx" in names
        site = tmp_path / "site"
        zf.extractall(site)
    # A fresh interpreter that sees the unpacked wheel and not the checkout.
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r})\n"
        "import json, numpy as np\n"
        "from voxgate.embedding import load_embedder\n"
        "e = load_embedder()\n"
        "v = e.embed((np.random.default_rng(0).standard_normal(32000) * 3000).astype(np.int16))\n"
        "print(json.dumps({'id': e.model_id, 'path': str(e.card.model_path), 'n': float(v @ v)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["id"].endswith("/int8")
    assert info["path"].startswith(str(site))
    assert abs(info["n"] - 1.0) < 1e-4
