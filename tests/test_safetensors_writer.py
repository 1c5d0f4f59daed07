"""``bitsmith.safetensors_writer``: standard safetensors files, pending tensors made one at a time."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bitsmith.safetensors_writer import PendingTensor, write_file


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "f32": torch.randn(3, 5), "bf16": torch.randn(7).bfloat16(), "f16": torch.randn(2, 2).half(),
        "i64": torch.arange(5), "u8": torch.randint(0, 255, (9,), dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4),
        "f64": torch.randn(3).double(), "fp8": torch.randn(4).to(torch.float8_e4m3fn),
    }


def test_files_read_back_with_safetensors_bit_for_bit(tmp_path):
    tensors = _tensors()
    path = tmp_path / "t.safetensors"
    write_file(tensors, path, {"format": "pt", "note": "x"})
    loaded = load_file(str(path))
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "note": "x"}
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    assert header_length % 8 == 0


def test_pending_tensors_are_made_one_at_a_time_while_writing(tmp_path):
    import weakref

    made: list[str] = []
    earlier: list[weakref.ref] = []

    def make(name: str, value: float):
        def build() -> torch.Tensor:
            assert all(ref() is None for ref in earlier), "an earlier pending tensor is still alive"
            made.append(name)
            tensor = torch.full((1000,), value)
            earlier.append(weakref.ref(tensor))
            return tensor
        return build

    pending = {name: PendingTensor(torch.float32, (1000,), make(name, float(i))) for i, name in enumerate("abc")}
    write_file({**pending, "plain": torch.ones(2)}, tmp_path / "p.safetensors")
    assert made == ["a", "b", "c"]  # each made once, in file order, only when written
    loaded = load_file(str(tmp_path / "p.safetensors"))
    assert [loaded[n][0].item() for n in "abc"] == [0.0, 1.0, 2.0] and torch.equal(loaded["plain"], torch.ones(2))


def test_a_pending_tensor_that_breaks_its_promise_is_refused(tmp_path):
    bad = PendingTensor(torch.float32, (4,), lambda: torch.zeros(5))
    with pytest.raises(ValueError, match=r"tensors\['w'\]: announced torch.float32 \[4\], made torch.float32 \[5\]"):
        write_file({"w": bad}, tmp_path / "bad.safetensors")


@pytest.mark.parametrize("tensors, metadata, message", [
    ({"w": [1, 2]}, None, r"tensors\['w'\]: expected a torch.Tensor or PendingTensor, got list"),
    ({"w": torch.zeros(2, dtype=torch.complex64)}, None, r"dtype torch.complex64 cannot be stored"),
    ({"w": torch.zeros(2)}, {"n": 1}, "metadata: expected a mapping of str to str"),
])
def test_bad_inputs_are_named_before_the_file_is_written(tmp_path, tensors, metadata, message):
    path = tmp_path / "never.safetensors"
    with pytest.raises(TypeError, match=message):
        write_file(tensors, path, metadata)
    assert not path.exists()
