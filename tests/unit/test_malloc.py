"""service/malloc.py: glibc settings applied in-process, an environment variable wins."""

from __future__ import annotations

import platform

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
        "MALLOC_MMAP_THRESHOLD_=131072",
        "MALLOC_TRIM_THRESHOLD_=131072",
    ]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert [s.split("=")[0] for s in tune_malloc()] == [
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
    ]
