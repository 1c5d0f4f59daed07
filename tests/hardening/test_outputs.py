"""Output files: atomic, never replaced without overwrite, inside the output folder, no collisions."""

from __future__ import annotations

import os

import pytest
import torch

import bitsmith
from bitsmith.errors import ConfigError


def _export(*paths, backend="bin"):
    return {"steps": [{"type": "export", "backend": backend, **({"path": p} if p else {})} for p in paths]}


def _factory(calls):
    def build():
        calls.append(1)
        torch.manual_seed(0)
        return torch.nn.Linear(4, 3)

    return build


def _problems(config, registry, tmp_path, **kwargs):
    calls = []
    with pytest.raises(ConfigError) as info:
        bitsmith.compress(_factory(calls), config, registry=registry, output_dir=tmp_path / "out", **kwargs)
    assert calls == [], "the model was built before the problem was reported"
    return info.value.lines


def test_paths_outside_the_output_folder_are_refused(file_registry, tmp_path):
    lines = _problems(_export("../../escape.bin", str(tmp_path / "abs.bin"), "sub/../../up.bin"), file_registry,
                      tmp_path)
    assert [line.split(":")[0] for line in lines] == ["steps.0.path", "steps.1.path", "steps.2.path"]
    assert all("is outside the output folder" in line for line in lines)
    assert not (tmp_path / "escape.bin").exists() and not (tmp_path / "abs.bin").exists()


def test_colliding_outputs_are_refused_together(file_registry, tmp_path):
    lines = _problems(_export("m.bin", "./m.bin", "report.json", None, None), file_registry, tmp_path)
    assert lines == [
        "steps.1.path: 'm.bin' is also written by steps.0; give each export its own path",
        "steps.2.path: 'report.json' is also written by the run's report; give each export its own path",
        "steps.4.path: 'model.bin' is also written by steps.3; give each export its own path",
    ]


def test_existing_outputs_are_kept_unless_overwrite(file_registry, tmp_path):
    out = tmp_path / "out"
    calls = []
    bitsmith.compress(_factory(calls), _export("m.bin"), registry=file_registry, output_dir=out)
    first = (out / "m.bin").read_bytes()
    (out / "m.bin").write_bytes(b"keep me")
    lines = _problems(_export("m.bin"), file_registry, tmp_path)
    assert lines == [f"the run's report: {out / 'report.json'} exists; pass overwrite=True (CLI: --overwrite) to "
                     "replace it",
                     f"the run's report: {out / 'report.txt'} exists; pass overwrite=True (CLI: --overwrite) to "
                     "replace it",
                     f"steps.0: {out / 'm.bin'} exists; pass overwrite=True (CLI: --overwrite) to replace it"]
    assert (out / "m.bin").read_bytes() == b"keep me"
    result = bitsmith.compress(_factory(calls), _export("m.bin"), registry=file_registry, output_dir=out,
                               overwrite=True)
    assert (out / "m.bin").read_bytes() == first and out / "m.bin" in result.artifacts
    assert not [p for p in out.iterdir() if p.name.startswith(".bitsmith-tmp-")]


def test_failing_backend_leaves_the_previous_file(file_registry, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.bin").write_bytes(b"previous export")
    with pytest.raises(RuntimeError, match="disk full"):
        bitsmith.compress(torch.nn.Linear(4, 3), _export("m.bin", backend="broken"), registry=file_registry,
                          output_dir=out, overwrite=True)
    assert (out / "m.bin").read_bytes() == b"previous export"
    assert sorted(p.name for p in out.iterdir()) == ["m.bin"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_symlink_out_of_the_output_folder_is_refused(file_registry, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    lines = _problems(_export("link/m.bin"), file_registry, tmp_path)
    assert len(lines) == 1 and lines[0].startswith("steps.0: ") and "leads outside the output folder" in lines[0]
    assert list(outside.iterdir()) == []


def test_mixed_precision_job_refuses_existing_outputs_before_work(tmp_path):
    from bitsmith.mixed_precision.job import load_job, run_job

    out = tmp_path / "mp"
    out.mkdir()
    (out / "sensitivity.csv").write_text("keep")
    (out / "config_optimal.yaml").write_text("keep")
    job = load_job({"model": "no_such_module:build", "data": "no_such_module:data", "target_bpw": 4,
                    "search": ["greedy", "optimal"], "out": str(out)})
    with pytest.raises(ConfigError) as info:
        run_job(job, echo=lambda _: None)  # refused before the (unimportable) model is even looked up
    assert info.value.lines == [
        f"out: refusing to replace existing file '{out / 'sensitivity.csv'}'; pass overwrite=True (CLI: --overwrite) "
        "to replace it",
        f"out: refusing to replace existing file '{out / 'config_optimal.yaml'}'; pass overwrite=True "
        "(CLI: --overwrite) to replace it"]
    assert sorted(p.name for p in out.iterdir()) == ["config_optimal.yaml", "sensitivity.csv"]


def test_config_dump_is_atomic_and_refuses_existing(tmp_path):
    from bitsmith.atomic import OverwriteError
    from bitsmith.config import KMeansPalettizerConfig, dump, load

    path = tmp_path / "c.yaml"
    dump(KMeansPalettizerConfig(), path)
    with pytest.raises(OverwriteError, match="c.yaml"):
        dump(KMeansPalettizerConfig(), path)
    dump(KMeansPalettizerConfig(), path, overwrite=True)
    assert load(path) == KMeansPalettizerConfig()
