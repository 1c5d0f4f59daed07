"""bitsmith export backend ``"safetensors"``: bitsmith's own packed file format.

``bitsmith.finalize(model, "safetensors")`` checks that every record can be stored;
``backend.save(model, "model.safetensors")`` writes it and
``bitsmith.load("model.safetensors", model_factory)`` restores a model whose outputs
are bit-identical to the prepared model's. The schema is documented in docs/format.md:
one named safetensors tensor per stored part, a JSON header with the specs, and a
SHA-256 checksum per tensor, verified on load.
"""

from .backend import SafetensorsBackend
from .container import header_nbytes, read_header, read_tensors
from .header import FORMAT, SCHEMA_VERSION, FormatError

__all__ = ["FORMAT", "FormatError", "SCHEMA_VERSION", "SafetensorsBackend", "header_nbytes", "read_header",
           "read_tensors"]
