"""The ``"safetensors"`` backend object registered with the ``export_backend`` hook."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Union

from torch import nn

from bitsmith import compressed

from . import format as fmt


class SafetensorsBackend:
    """Export to bitsmith's packed safetensors format and load it back.

    ``finalize(model)`` checks that every record can be stored and returns the model
    unchanged (it keeps running in eager PyTorch); ``save(model, path)`` writes the
    file; ``load(path, model_factory)`` rebuilds the model from an uncompressed
    instance, re-attaching the records, so its outputs are bit-identical to the
    model that was saved. Works for every algorithm: it reads only the records.
    """

    description = "bitsmith packed format: bit-packed LUT indices, LUTs, scales, qparams (.safetensors)"
    suffix = ".safetensors"

    def finalize(self, model: nn.Module) -> nn.Module:
        """Validate that ``model``'s records can be stored; return ``model``."""
        fmt.encode(model)
        return model

    def save(self, model: nn.Module, path: Union[str, Path], *, example_inputs: Any = None) -> Path:
        """Write ``model`` to ``path`` (``example_inputs`` is not needed and ignored); returns the path."""
        return fmt.write(model, path)

    def load(self, path: Union[str, Path], model_factory: Union[Callable[[], nn.Module], nn.Module]) -> nn.Module:
        """A model built by ``model_factory`` with the file's weights and records, in eval mode."""
        model = fmt.read(path, fmt.build_model(model_factory))
        compressed_activations(model)
        return model.eval()


def compressed_activations(model: nn.Module) -> None:
    """Make the activation quantization records of ``model`` take effect in eager PyTorch."""
    from bitsmith.loading import enable_activation_quant

    enable_activation_quant(model)
