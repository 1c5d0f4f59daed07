"""pareto_sweep and plot_pareto."""

from __future__ import annotations

import builtins

import pytest

from bitsmith.mixed_precision import apply_recipe, compute_sensitivity, pareto_sweep, plot_pareto


@pytest.fixture
def table(resnetish, images, registry):
    return compute_sensitivity(resnetish, images, cache_dir=None, registry=registry)


def test_sweep_generates_and_evaluates_each_target(table, resnetish, registry):
    seen = []

    def evaluate(recipe):
        seen.append(recipe.target_bpw)
        model = apply_recipe(resnetish, recipe, table=table, registry=registry)
        return {"value": recipe.bpw * 10, "layers": len(list(model.modules()))}

    sweep = pareto_sweep(table, targets=[6, 1, 3, 4.5], search="optimal", eval_fn=evaluate, registry=registry)
    assert [p.target for p in sweep] == [3, 4.5, 6]  # sorted; 1 BPW is below the 2-bit floor
    assert seen == [3.0, 4.5, 6.0]
    assert sweep.skipped and sweep.skipped[0][0] == 1 and "below the smallest recipe" in sweep.skipped[0][1]
    bpws = [p.bpw for p in sweep]
    assert bpws == sorted(bpws) and all(p.bpw <= p.target for p in sweep)
    scores = [p.recipe.predicted_score for p in sweep]
    assert scores == sorted(scores)  # more bits, higher predicted PSNR (optimal search)
    assert sweep.points[0].value == pytest.approx(bpws[0] * 10)
    text = str(sweep)
    assert "BPW all-in" in text and "skipped target 1" in text


def test_plot_writes_a_png(table, registry, tmp_path):
    sweeps = {name: pareto_sweep(table, targets=[3, 4, 5, 6], search=name, registry=registry)
              for name in ("greedy", "optimal")}
    fig = plot_pareto(sweeps, tmp_path / "plots" / "pareto.png", baselines={"uniform 4-bit": (4.1, 30.0)})
    assert (tmp_path / "plots" / "pareto.png").stat().st_size > 1000
    assert fig.axes[0].get_ylabel() == "predicted PSNR"


def test_plot_without_matplotlib_says_how_to_install(table, registry, monkeypatch):
    sweep = pareto_sweep(table, targets=[4], registry=registry)
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"pip install 'bitsmith\[plot\]'"):
        plot_pareto(sweep)
