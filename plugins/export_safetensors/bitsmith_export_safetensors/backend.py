"""The ``"safetensors"`` backend object registered with the ``export_backend`` hook."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Union

from torch import nn

from bitsmith.loading import enable_activation_quant

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
        """Check that ``model``'s records can be stored; make its activation records act; return ``model``.

        After a quantizer's ``finalize`` the activation ranges live in records only; the
        returned model fake-quantizes them in eager PyTorch again (as :meth:`load` does),
        so it computes exactly what the prepared model did.
        """
        fmt.encode(model)
        enable_activation_quant(model)
        return model

    def save(self, model: nn.Module, path: Union[str, Path], *, example_inputs: Any = None) -> Path:
        """Write ``model`` to ``path`` (``example_inputs`` is not needed and ignored); returns the path."""
        return fmt.write(model, path)

    def load(self, path: Union[str, Path], model_factory: Union[Callable[[], nn.Module], nn.Module]) -> nn.Module:
        """A model built by ``model_factory`` with the file's weights and records, in eval mode."""
        model = fmt.read(path, fmt.build_model(model_factory))
        enable_activation_quant(model)
        return model.eval()
