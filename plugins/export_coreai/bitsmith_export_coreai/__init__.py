"""bitsmith-export-coreai: the ``"coreai"`` export backend (``bitsmith.ExportBackend.CoreAI``).

Modules: :mod:`.backend` (the registered object), :mod:`.modules` (weights computed
from LUT/int buffers), :mod:`.activations` (quantize/dequantize hooks).
"""
