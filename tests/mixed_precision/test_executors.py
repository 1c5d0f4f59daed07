"""Parallel sensitivity: a spawned process pool and a Dask cluster give the sequential table."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing

import pytest
import torch

from bitsmith.mixed_precision import compute_sensitivity

CANDIDATES = [2, 4, "4-bit g8"]


def _rows(table):
    return [(r.layer, r.candidate, r.bits, r.score) for r in table.rows]


@pytest.fixture
def data():
    return torch.randn(32, 16, generator=torch.Generator().manual_seed(0))


def test_process_pool_equals_sequential(mlp, data, registry):
    sequential = {e: compute_sensitivity(mlp, data, CANDIDATES, engine=e, cache_dir=None, registry=registry)
                  for e in ("fast", "naive")}
    assert _rows(sequential["fast"]) == _rows(sequential["naive"])
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for engine in ("fast", "naive"):
            pooled = compute_sensitivity(mlp, data, CANDIDATES, engine=engine, cache_dir=None, registry=registry,
                                         executor=pool)
            assert pooled.meta["engine"] == engine
            assert _rows(pooled) == _rows(sequential[engine])
    own = compute_sensitivity(mlp, data, CANDIDATES, cache_dir=None, registry=registry, num_workers=2)
    assert _rows(own) == _rows(sequential["fast"])


def test_dask_cluster_equals_sequential(mlp, data, registry, tmp_path):
    distributed = pytest.importorskip("distributed")
    import mp_helpers

    sequential = compute_sensitivity(mlp, data, CANDIDATES, cache_dir=None, registry=registry)
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None,
                                  local_directory=str(tmp_path)) as cluster, distributed.Client(cluster) as client:
        client.upload_file(mp_helpers.__file__)  # the test clusterer lives in a test helper module
        executor = client.get_executor()
        submitted, submit = [], executor.submit
        executor.submit = lambda fn, *args, **kwargs: submitted.append(args) or submit(fn, *args, **kwargs)
        pooled = compute_sensitivity(mlp, data, CANDIDATES, cache_dir=tmp_path / "cache", registry=registry,
                                     executor=executor)
    assert pooled.meta["pairs_scored"] == 8 and pooled.meta["engine"] == "fast"
    assert _rows(pooled) == _rows(sequential)
    # scoring units refer to the model and data scattered once to every worker; none carries a model
    units = [args for args in submitted if isinstance(args[0], distributed.Future)]
    assert len(units) >= 2 and len({args[0].key for args in units}) == 1
    assert not any(isinstance(a, torch.nn.Module) for args in submitted for a in args)
