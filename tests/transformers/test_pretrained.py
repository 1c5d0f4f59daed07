"""save_pretrained / from_pretrained: bit-identical in a fresh process, sizes as accounted, plain transformers refused."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors import safe_open

import bitsmith
from bitsmith import compressed, pretrained
from bitsmith.atomic import OverwriteError
from bitsmith.coverage import IncompatibleLayerWarning
from bitsmith.palettization import KMeansPalettizer, KMeansPalettizerConfig
from bitsmith.sizes import model_size

from .conftest import tiny_gpt2, tiny_llama, transformers

HEADER_ALLOWANCE = 64 * 1024
"""Bytes a file may exceed the size accounting by: the safetensors header and the per-record spec JSON."""

CHILD = """
import sys, torch, transformers, bitsmith
from bitsmith import compressed
model = bitsmith.from_pretrained(sys.argv[1], getattr(transformers, sys.argv[2]))
saved = torch.load(sys.argv[3])
with torch.no_grad():
    logits = model(saved["tokens"]).logits
records = {f"{m}.{n}": r for m, _, n, r in compressed.iter_records(model)}
assert records.keys() == saved["records"].keys(), sorted(records)
for name, (lut, indices) in saved["records"].items():
    assert torch.equal(records[name].lut, lut) and torch.equal(records[name].indices, indices), name
assert torch.equal(logits, saved["logits"]), (logits - saved["logits"]).abs().max()
print("identical", len(records))
"""


def palettized(make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompatibleLayerWarning)
        return KMeansPalettizer(make(), KMeansPalettizerConfig.presets.w4()).prepare(progress=False)


@pytest.mark.slow
def test_gpt2_round_trips_bit_identically_in_a_fresh_process(tmp_path, tokens):
    model = palettized(tiny_gpt2)
    folder = bitsmith.save_pretrained(model, tmp_path / "gpt2")
    with torch.no_grad():
        logits = model(tokens).logits
    records = {f"{m}.{n}": (r.lut, r.indices) for m, _, n, r in compressed.iter_records(model)}
    torch.save({"tokens": tokens, "logits": logits, "records": records}, tmp_path / "expected.pt")
    run = subprocess.run([sys.executable, "-c", CHILD, str(folder), "GPT2LMHeadModel", str(tmp_path / "expected.pt")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["identical", "11"]


def test_directory_contents_and_size_accounting(tmp_path):
    model = palettized(tiny_gpt2)
    folder = bitsmith.save_pretrained(model, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    quant = config["quantization_config"]
    assert quant["quant_method"] == "bitsmith" and quant["format_version"] == 1
    assert quant["weights"] == pretrained.WEIGHTS_NAME and config["model_type"] == "gpt2"
    assert quant["records"]["transformer.h.0.attn.c_attn.weight"] == "PalettizedTensor: 4-bit g16a1"
    assert quant["records"]["transformer.wte.weight"] == "PalettizedTensor: 4-bit g20"
    path = folder / pretrained.WEIGHTS_NAME
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        aliases = json.loads(handle.metadata()["bitsmith_aliases"])
        packed = handle.get_tensor("transformer.h.0.mlp.c_fc.weight_bitsmith_packed_indices")
    assert "transformer.h.0.mlp.c_fc.weight" not in keys  # compressed tensors are stored compressed only
    assert packed.dtype == torch.uint8 and packed.numel() == 64 * 256 * 4 // 8
    assert aliases["lm_head.weight_bitsmith_lut"] == "transformer.wte.weight_bitsmith_lut"  # tied: stored once
    accounted = model_size(model).total.total_bits // 8
    assert accounted < path.stat().st_size < accounted + HEADER_ALLOWANCE
    assert path.stat().st_size < sum(p.numel() * 4 for p in model.parameters()) / 6  # ~7x smaller than fp32


def test_llama_round_trips_and_writes_refuse_to_overwrite(tmp_path, tokens):
    model = palettized(tiny_llama)
    bitsmith.save_pretrained(model, tmp_path)
    with pytest.raises(OverwriteError):
        bitsmith.save_pretrained(model, tmp_path)
    bitsmith.save_pretrained(model, tmp_path, overwrite=True)
    loaded = bitsmith.from_pretrained(tmp_path, transformers.LlamaForCausalLM)
    assert not loaded.training and len(list(compressed.iter_records(loaded))) == 16
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, model(tokens).logits)
    factory_loaded = bitsmith.from_pretrained(
        tmp_path, lambda cfg: transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)))
    with torch.no_grad():
        assert torch.equal(factory_loaded(tokens).logits, model(tokens).logits)


def test_plain_transformers_refuses_the_directory(tmp_path):
    bitsmith.save_pretrained(palettized(tiny_gpt2), tmp_path)
    with pytest.raises(OSError, match="no file named model.safetensors"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(TypeError, match="save_pretrained needs a transformers model"):
        bitsmith.save_pretrained(torch.nn.Linear(2, 2), tmp_path)
    tiny_gpt2().save_pretrained(tmp_path)  # a plain transformers directory
    with pytest.raises(bitsmith.BitsmithError, match="quantization_config.quant_method is None, not 'bitsmith'"):
        bitsmith.from_pretrained(tmp_path, transformers.GPT2LMHeadModel)
