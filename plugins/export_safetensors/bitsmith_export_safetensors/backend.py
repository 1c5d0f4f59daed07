"""The ``"safetensors"`` backend object registered with the ``export_backend`` hook."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Union

from torch import nn

from bitsmith import export
from bitsmith.loading import enable_activation_quant

from . import container
from . import format as fmt


class SafetensorsBackend:
    """Export to bitsmith's packed safetensors format (docs/format.md) and load it back.

    ``finalize(model)`` checks that every record can be stored and returns the model
    (it keeps running in eager PyTorch; tensors another backend converted, such as a
    model finalized for Core AI before an activation quantizer ran, are restored to
    dense parameters first); ``save(model, path)`` writes the file atomically;
    ``load(path, model_factory)`` rebuilds the model from an uncompressed instance,
    re-attaching the records, so its outputs are bit-identical to the model that was
    saved. Works for every algorithm: it reads only the records.
    """

    description = "bitsmith packed format: bit-packed LUT indices, LUTs, scales, qparams (.safetensors)"
    suffix = ".safetensors"

    def finalize(self, model: nn.Module) -> nn.Module:
        """Check that ``model``'s records can be stored; make its activation records act; return ``model``.

        After a quantizer's ``finalize`` the activation ranges live in records only; the
        returned model fake-quantizes them in eager PyTorch again (as :meth:`load` does),
        so it computes exactly what the prepared model did.
        """
        export.restore_dense(model)
        fmt.encode(model)
        enable_activation_quant(model)
        return model

    def save(self, model: nn.Module, path: Union[str, Path], *, example_inputs: Any = None,
             overwrite: bool = False) -> Path:
        """Write ``model`` to ``path`` (``example_inputs`` is not needed and ignored); returns the path.

        The file is written beside ``path`` and renamed; an existing file is replaced
        only with ``overwrite=True``.
        """
        if export.converted_tensors(model):
            model = self.finalize(copy.deepcopy(model))
        tensors, header = fmt.encode(model)
        return container.write(tensors, header, path, overwrite=overwrite)

    def load(self, path: Union[str, Path], model_factory: Union[Callable[[], nn.Module], nn.Module]) -> nn.Module:
        """A model built by ``model_factory`` with the file's weights and records, in eval mode.

        The file is verified (header size, format, schema version, header and tensor
        checksums) before the factory is called.
        """
        header, tensors = container.read_verified(path)
        decoder = fmt.Decoder(path, header, tensors)
        model = decoder.apply(fmt.build_model(model_factory))
        enable_activation_quant(model)
        return model.eval()
