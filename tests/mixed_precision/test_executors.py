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

    sequential = compute_sensitivity(mlp, data, CANDIDATES, cache_dir=None, registry=registry)  # on 1 thread
    torch.set_num_threads(2)  # the caller's count is not imposed on the workers (the fixture restores it)
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None,
                                  local_directory=str(tmp_path)) as cluster, distributed.Client(cluster) as client:
        client.upload_file(mp_helpers.__file__)  # the test clusterer lives in a test helper module
        executor = client.get_executor()
        submitted, submit = [], executor.submit
        executor.submit = lambda fn, *args, **kwargs: submitted.append(args) or submit(fn, *args, **kwargs)
        pooled = compute_sensitivity(mlp, data, CANDIDATES, cache_dir=tmp_path / "cache", registry=registry,
                                     executor=executor)
        # each worker scored with the one torch thread Dask's nanny gives it (two would oversubscribe 2 cores)
        assert set(client.run(torch.get_num_threads).values()) == {1}
    assert pooled.meta["pairs_scored"] == 8 and pooled.meta["engine"] == "fast"
    assert _rows(pooled) == _rows(sequential)
    # scoring units refer to the model and data scattered once to every worker; none carries a model
    units = [args for args in submitted if isinstance(args[0], distributed.Future)]
    assert len(units) >= 2 and len({args[0].key for args in units}) == 1
    assert not any(isinstance(a, torch.nn.Module) for args in submitted for a in args)


def _shared_and_tasks(model, images, registry, engine, caller_reference_offset):
    """A worker's view of a fast/block scoring run of ``model``: its SharedScoring and one task per layer."""
    from bitsmith.mixed_precision.engine import EvalTask, trace
    from bitsmith.mixed_precision.executors import SharedScoring
    from bitsmith.mixed_precision.inputs import default_output_fn, normalize_data, run_batches

    table = compute_sensitivity(model, images, CANDIDATES[:2], engine=engine, cache_dir=None, registry=registry)
    labels = [c["label"] for c in table.meta["candidates"]]
    tasks = [EvalTask(li, info.name, info.tensor, [(ci, table.records[(info.name, label)])
                                                   for ci, label in enumerate(labels)])
             for li, info in enumerate(table.layers)]
    batches = normalize_data(images)
    reference = run_batches(model, batches, default_output_fn)
    program = trace(model, batches, reference, default_output_fn)[0] if engine == "fast" else None
    shared = SharedScoring(model=model, batches=batches, reference=reference + caller_reference_offset,
                           metric=registry.get("sensitivity_metric", "psnr"), output_fn=default_output_fn,
                           engine=engine, program=program, tensors=[(t.name, t.tensor) for t in tasks])
    names = [info.name for info in table.layers]
    expected = {(names.index(r.layer), labels.index(r.candidate)): r.score for r in table.rows}
    return shared, tasks, expected


@pytest.mark.parametrize("engine", ["fast", "block"])
def test_a_worker_scores_against_its_own_reference(resnetish, images, registry, engine):
    # a worker whose arithmetic differs from the caller's (other torch threads, other CPU) sees a reference that
    # its own baseline pass does not reproduce; it computes its own instead of falling back to the naive engine
    from bitsmith.mixed_precision.executors import run_shared

    shared, tasks, expected = _shared_and_tasks(resnetish, images, registry, engine, 1e-3)
    result = run_shared(shared, tasks)
    assert result.engine == engine and result.note is None
    assert result.reference_diff == pytest.approx(1e-3, rel=1e-2)
    assert {(li, ci): score for li, ci, score, _ in result.scores} == expected

    same, tasks, _ = _shared_and_tasks(resnetish, images, registry, engine, 0.0)
    assert run_shared(same, tasks).reference_diff == 0.0


def test_units_interleave_layers_and_equal_the_sequential_table(resnetish, images, registry):
    # with the fast engine a layer near the input costs far more than one near the output: units take every
    # n-th layer instead of a contiguous run, so workers get similar shares
    from bitsmith.mixed_precision.executors import score_on

    shared, tasks, expected = _shared_and_tasks(resnetish, images, registry, "fast", 0.0)
    scores, units = {}, []
    with cf.ThreadPoolExecutor(1) as pool:
        submit = pool.submit
        pool.submit = lambda fn, shared, unit: units.append([t.layer_index for t in unit]) or submit(fn, shared, unit)
        results = score_on(pool, shared, tasks, lambda li, ci, score, s: scores.__setitem__((li, ci), score))
    assert units == [[0, 2], [1, 3]]
    assert scores == expected and {r.engine for r in results} == {"fast"}


def test_worker_threads():
    from bitsmith.mixed_precision.executors import unit_threads
    from bitsmith.palettization.workers import available_cores

    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:  # never started
        assert unit_threads(pool) == max(1, available_cores() // 2)
    with cf.ThreadPoolExecutor(2) as pool:  # threads share this process's setting: left to the caller
        assert unit_threads(pool) is None


def test_a_job_scores_on_the_dask_scheduler_it_names(mlp, data, registry, tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    from bitsmith import plugins
    from bitsmith.mixed_precision.job import load_job, run_job

    (tmp_path / "dask_job_code.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)).eval()\n\n"
        "def data():\n    return torch.randn(32, 16, generator=torch.Generator().manual_seed(0))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sequential = compute_sensitivity(mlp, data, CANDIDATES, cache_dir=None, registry=registry)
    previous = plugins.set_default_registry(registry)
    try:
        with distributed.LocalCluster(processes=False, n_workers=2, threads_per_worker=1,
                                      dashboard_address=None) as cluster:
            job = load_job({"model": "dask_job_code:build", "data": "dask_job_code:data", "target_bpw": 4,
                            "candidates": CANDIDATES, "cache_dir": None, "out": str(tmp_path / "out"),
                            "scheduler": cluster.scheduler_address, "progress": False})
            result = run_job(job, echo=lambda line: None)
            ran = set(cluster.scheduler.task_prefixes)
    finally:
        plugins.set_default_registry(previous)
    assert _rows(result["table"]) == _rows(sequential)
    assert result["table"].meta["engine"] == "fast" and result["table"].meta["pairs_scored"] == 8
    assert {"run_job", "run_shared"} <= ran  # clustering and scoring ran on the cluster's workers


@pytest.mark.parametrize("extra, message", [
    ({"scheduler": "localhost:8786"}, "scheduler: expected a Dask scheduler address like 'tcp://host:8786'"),
    ({"scheduler": "tcp://h:1", "num_workers": 2}, "scheduler: give either a Dask scheduler or num_workers > 1"),
])
def test_bad_scheduler_is_named_before_any_work(extra, message):
    from bitsmith.errors import ConfigError
    from bitsmith.mixed_precision.job import load_job

    with pytest.raises(ConfigError, match=message):
        load_job({"model": "a:b", "data": "c:d", "target_bpw": 4, **extra})


def test_an_unreachable_scheduler_is_a_config_error(tmp_path):
    pytest.importorskip("distributed")
    import dask

    from bitsmith.errors import ConfigError
    from bitsmith.mixed_precision.job import _dask_executor

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(ConfigError, match="scheduler: cannot connect to tcp://127.0.0.1:1"):
            with _dask_executor("tcp://127.0.0.1:1"):
                pass
