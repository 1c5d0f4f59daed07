"""tensor_heap: a worker whose environment pinned glibc's thresholds (Dask's nanny) keeps activations on the heap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from bitsmith.mixed_precision import worker_heap
from bitsmith.mixed_precision.worker_heap import tensor_heap

MiB = 1024 * 1024


class FakeLibc:
    """Records mallopt/malloc_trim calls."""

    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def test_thresholds_are_raised_while_scoring_and_the_environments_restored(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    libc = FakeLibc()
    with tensor_heap(libc):
        with tensor_heap(libc):  # a second worker thread: one setting, restored by the last to leave
            pass
        assert libc.calls == [("mallopt", -3, 32 * MiB), ("mallopt", -1, 64 * MiB)]
    assert libc.calls[2:] == [("mallopt", -1, 65536), ("mallopt", -3, 128 * 1024), ("malloc_trim", 0)]


@pytest.mark.parametrize("env", [{}, {"MALLOC_TRIM_THRESHOLD_": "lots"}])
def test_adaptive_glibc_is_left_alone(monkeypatch, env):
    for var in worker_heap._ENV:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    libc = FakeLibc()
    with tensor_heap(libc):
        pass
    assert libc.calls == []


@pytest.mark.skipif(worker_heap._glibc() is None, reason="needs glibc")
def test_a_pinned_worker_stops_page_faulting_its_activations():
    # 40 allocations of 4 MiB, written once each: with Dask's MALLOC_TRIM_THRESHOLD_ every one is a fresh mmap
    # (~1024 page faults each); inside tensor_heap they reuse the same heap memory. Afterwards the policy is
    # checked with 16 MiB blocks: a freed 4 MiB heap chunk may legitimately serve later 4 MiB requests under
    # any policy, but nothing freed inside is large enough for these, so they are fresh mmaps again.
    code = textwrap.dedent("""
        import json, resource, torch
        from bitsmith.mixed_precision.worker_heap import tensor_heap

        def faults(count=40, mib=4):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(count):
                torch.empty(mib * 256 * 1024).fill_(1.0)
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

        outside = faults()
        with tensor_heap():
            faults()  # the heap grows once
            inside = faults()
        print(json.dumps({"outside": outside, "inside": inside, "after": faults(count=10, mib=16)}))
    """)
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout)
    assert out["outside"] > 30 * 1000  # 40 x 1024 pages, give or take
    assert out["inside"] < out["outside"] / 10
    assert out["after"] > 30 * 1000  # 10 x 4096 pages: the environment's policy is back
