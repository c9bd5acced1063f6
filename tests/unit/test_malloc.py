"""service/malloc.py: glibc settings applied in-process, an environment variable wins."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from voxgate.service.malloc import tune_malloc

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")


def test_settings_are_applied_unless_the_environment_sets_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for env in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(env, raising=False)
    assert tune_malloc() == [
        "MALLOC_ARENA_MAX=2",
        "MALLOC_MMAP_THRESHOLD_=4194304",
        "MALLOC_TRIM_THRESHOLD_=8388608",
    ]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert [s.split("=")[0] for s in tune_malloc()] == [
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
    ]


# Run in a child: mallopt settings stay for the life of a process.
_FAULTS = """
import resource, sys
from voxgate.service.malloc import tune_malloc
from voxgate.commands.bench import synthetic_speech
from voxgate.embedding import load_embedder

tune_malloc()
embedder = load_embedder()
pcm = synthetic_speech(3.0)

def streamed():
    s = embedder.stream()
    for i in range(0, pcm.size, 480):
        s.push(pcm[i : i + 480])
    s.finish()

for attempt in (lambda: embedder.embed(pcm), streamed):
    attempt()
    faults = []
    for _ in range(11):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        attempt()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(sorted(faults)[5])
"""


def test_a_repeated_attempt_reuses_memory_instead_of_faulting_in_fresh_pages() -> None:
    """With 128 kB thresholds every buffer of an attempt was a fresh mapping (~3900 page
    faults per 3 s utterance; service/malloc.py has the figures). Most attempts should now
    fault in nothing; the heap's top may still go back now and then, so the median of 11
    attempts is checked."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "daemon")
    proc = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    whole, streamed = (int(n) for n in proc.stdout.split())
    assert whole < 300, f"median {whole} page faults per repeated embedding"
    assert streamed < 300, f"median {streamed} page faults per repeated streamed embedding"
