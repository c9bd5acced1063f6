"""voxgate/blas.py: the `voxgate` command runs numpy's OpenBLAS on one thread unless the user
sets a thread count. Each case runs a real process and asks the OpenBLAS that numpy loaded
how many threads it uses, as the process exits (a `sitecustomize` on PYTHONPATH registers
the question; it imports nothing that would load numpy early)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voxgate.blas import THREAD_VARIABLES, one_blas_thread

REPO = Path(__file__).resolve().parents[2]

REPORTER = """
import atexit, ctypes, json, os, sys


def openblas_threads():
    with open("/proc/self/maps") as maps:
        paths = sorted({l.split()[-1] for l in maps if "openblas" in l.lower() and "/" in l})
    for path in paths:
        lib = ctypes.CDLL(path)
        for symbol in (
            "scipy_openblas_get_num_threads64_",
            "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_",
            "openblas_get_num_threads",
        ):
            get = getattr(lib, symbol, None)
            if get is not None:
                return int(get())
    return None


def report():
    with open(os.environ["BLAS_REPORT"], "w") as out:
        json.dump({"numpy": "numpy" in sys.modules, "threads": openblas_threads()}, out)


atexit.register(report)
"""

CONSOLE_SCRIPT = Path(sys.executable).parent / "voxgate"


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def blas_threads(tmp_path: Path, argv: list[str], **env: str) -> int:
    """Run argv with the reporter; the OpenBLAS thread count of the numpy it imported."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(REPORTER)
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    base["PYTHONPATH"] = f"{hook}{os.pathsep}{REPO / 'daemon'}"
    base["BLAS_REPORT"] = str(report)
    proc = subprocess.run(argv, env={**base, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(report.read_text())
    assert got["numpy"], f"{argv} did not import numpy: nothing to check"
    if got["threads"] is None:
        pytest.skip("numpy here does not use OpenBLAS")
    return int(got["threads"])


needs_two_cpus = pytest.mark.skipif(
    usable_cpus() < 2, reason="OpenBLAS uses one thread anyway on one CPU"
)


@needs_two_cpus
def test_openblas_reads_its_thread_count_only_when_numpy_is_imported(tmp_path: Path) -> None:
    """Why voxgate.cli sets the variable before any import: set after `import numpy` it is
    ignored."""
    default = blas_threads(tmp_path, [sys.executable, "-c", "import numpy"])
    assert default > 1  # one per usable CPU, up to what OpenBLAS was built for
    late = (
        "import os, numpy; os.environ['OPENBLAS_NUM_THREADS'] = '1'; numpy.ones(9) @ numpy.ones(9)"
    )
    assert blas_threads(tmp_path, [sys.executable, "-c", late]) == default
    early = "import os; os.environ['OPENBLAS_NUM_THREADS'] = '1'; import numpy"
    assert blas_threads(tmp_path, [sys.executable, "-c", early]) == 1


ENTRY_POINTS = {
    "console script": [str(CONSOLE_SCRIPT)],
    "python -m voxgate": [sys.executable, "-m", "voxgate"],
}


@needs_two_cpus
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_the_voxgate_command_runs_openblas_on_one_thread(tmp_path: Path, entry: str) -> None:
    """`voxgate --version` builds the whole parser, importing every command (and numpy)."""
    if entry == "console script" and not CONSOLE_SCRIPT.exists():
        pytest.skip(f"no console script at {CONSOLE_SCRIPT}")
    assert blas_threads(tmp_path, [*ENTRY_POINTS[entry], "--version"]) == 1


@needs_two_cpus
@pytest.mark.parametrize("variable", ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"])
def test_a_thread_count_the_user_sets_is_kept(tmp_path: Path, variable: str) -> None:
    argv = [sys.executable, "-m", "voxgate", "--version"]
    assert blas_threads(tmp_path, argv, **{variable: "2"}) == 2


def test_only_an_unset_or_empty_environment_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "")  # empty: OpenBLAS treats it as unset
    assert one_blas_thread()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert not one_blas_thread()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "3"
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    monkeypatch.setenv("GOTO_NUM_THREADS", "2")
    assert not one_blas_thread()
    assert "OPENBLAS_NUM_THREADS" not in os.environ
