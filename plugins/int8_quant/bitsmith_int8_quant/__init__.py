"""bitsmith-int8-quant: INT8 (and INT4-weight) post-training quantization of weights and activations.

Use it through the core: ``from bitsmith.quantization import Quantizer, QuantizerConfig``
(``Quantizer`` resolves to :class:`~bitsmith_int8_quant.quantizer.Quantizer` through
the ``quantizer`` registry). Observers ``"min_max"`` and ``"moving_average"`` are
registered through the ``observer`` hook.
"""

from .affine import dequantize, fake_quantize, qparams, quantize
from .observers import MinMaxObserver, MovingAverageObserver
from .quantizer import AlreadyCompressedWarning, Quantizer
from .sites import ActivationSite, NotCalibratedError
from .weights import quantize_weight, tensor_axis

__all__ = ["ActivationSite", "AlreadyCompressedWarning", "MinMaxObserver", "MovingAverageObserver",
           "NotCalibratedError", "Quantizer", "dequantize", "fake_quantize", "qparams", "quantize",
           "quantize_weight", "tensor_axis"]
