"""bitsmith export backend ``"safetensors"``: bitsmith's own packed file format.

``bitsmith.finalize(model, "safetensors")`` checks that every record can be stored;
``backend.save(model, "model.safetensors")`` writes it and
``bitsmith.load("model.safetensors", model_factory)`` restores a model whose outputs
are bit-identical to the prepared model's. The layout is described in
:mod:`bitsmith_export_safetensors.format`.
"""

from .backend import SafetensorsBackend
from .format import FORMAT, SCHEMA_VERSION, read_header

__all__ = ["FORMAT", "SCHEMA_VERSION", "SafetensorsBackend", "read_header"]
