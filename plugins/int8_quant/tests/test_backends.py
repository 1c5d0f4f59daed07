"""Integration with the first-party export backends through the default registry (entry points)."""

from __future__ import annotations

import pytest
import torch

from bitsmith import compressed
from bitsmith.compressed import ActivationQuant, QuantizedTensor
from bitsmith.quantization import Quantizer, QuantizerConfig
from bitsmith.sizes import model_size


@pytest.fixture
def calibrated(small_net, batches):
    quantizer = Quantizer(small_net, QuantizerConfig())
    prepared = quantizer.prepare(batches[0])
    with quantizer.calibration_mode(), torch.no_grad():
        for x in batches:
            prepared(x)
    return quantizer, prepared


def test_torch_backend_reproduces_the_prepared_model(calibrated, batches):
    pytest.importorskip("bitsmith_export_torch")
    quantizer, prepared = calibrated
    exported = quantizer.finalize(backend="torch")
    with torch.no_grad():
        assert torch.equal(exported(batches[3]), prepared(batches[3]))


def test_coreai_backend_keeps_records_and_outputs(calibrated, batches):
    pytest.importorskip("bitsmith_export_coreai")
    quantizer, prepared = calibrated
    exported = quantizer.finalize(backend="coreai")
    kinds = {(name, type(r)) for _, _, name, r in compressed.iter_records(exported)}
    assert kinds == {("weight", QuantizedTensor), ("input.0", ActivationQuant), ("output.0", ActivationQuant)}
    with torch.no_grad():
        out, ref = exported(batches[3]), prepared(batches[3])
    # quantize_per_tensor may round a value sitting on a half step differently: at most one step, rarely
    assert (out - ref).abs().max() <= 1e-3 * ref.abs().max()
    assert model_size(exported).compressed == model_size(prepared).compressed
