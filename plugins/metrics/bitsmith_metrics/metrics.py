"""Metrics that compare a model's outputs with the uncompressed (reference) outputs.

Every metric satisfies :class:`bitsmith.protocols.SensitivityMetric`: ``score`` reads
two tensors of the same shape (all batches of the sensitivity data concatenated),
``higher_is_better`` says how to read the score, ``unit`` labels it, and
``to_distortion`` maps a score to a non-negative number that adds up across layers
compressed together (lower is better), which is what recipe searches minimise.
``from_distortion`` (an optional extra the core uses when present) maps a summed
distortion back to a predicted score.

=======  ======================================  =====  ====================================
name     score                                   unit   distortion (additive)
=======  ======================================  =====  ====================================
psnr     ``10 log10(max(ref**2) / mse)``         dB     ``10**(-psnr/10)`` = mse / peak**2
sqnr     ``10 log10(sum(ref**2) / sum(err**2))`` dB     ``10**(-sqnr/10)`` = noise / signal
mse      ``mean((ref - out)**2)``                        the mse itself
kl       ``mean KL(softmax(ref) || softmax(out))`` nats  the KL itself (second-order additive)
=======  ======================================  =====  ====================================

The dB metrics turn into relative noise powers because independent noise sources
add their powers: two layers each costing 40 dB together cost about 37 dB.
Computations run in float64; an exact output scores ``inf`` dB (distortion 0).
"""

from __future__ import annotations

import math

import torch

__all__ = ["KL", "MSE", "PSNR", "SQNR", "check_pair"]


def check_pair(reference: torch.Tensor, output: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two output tensors and return them as float64 (raises ``ValueError`` naming the metric)."""
    if not isinstance(reference, torch.Tensor) or not isinstance(output, torch.Tensor):
        raise TypeError(f"{metric}: expected two tensors, got {type(reference).__name__} and {type(output).__name__}")
    if reference.shape != output.shape:
        raise ValueError(f"{metric}: reference shape {tuple(reference.shape)} differs from output shape "
                         f"{tuple(output.shape)}")
    if reference.numel() == 0:
        raise ValueError(f"{metric}: empty outputs")
    return reference.detach().to(torch.float64), output.detach().to(torch.float64)


def _db(ratio_num: float, ratio_den: float) -> float:
    if ratio_den == 0:
        return math.inf
    if ratio_num == 0:
        return -math.inf
    return 10.0 * math.log10(ratio_num / ratio_den)


def _db_to_power(score: float) -> float:
    if score == math.inf:
        return 0.0
    return 10.0 ** (-score / 10.0)


def _power_to_db(distortion: float) -> float:
    if distortion <= 0:
        return math.inf
    return -10.0 * math.log10(distortion)


class PSNR:
    """Peak signal-to-noise ratio of the outputs in dB: ``10 log10(max(ref**2) / mse)``.

    The peak is the largest squared reference value (as in coremltools' PSNR of
    logits). Higher is better; distortion is ``10**(-psnr/10)`` (noise power
    relative to the peak power), which adds across layers.
    """

    name = "psnr"
    higher_is_better = True
    unit = "dB"

    def score(self, reference: torch.Tensor, output: torch.Tensor) -> float:
        """PSNR in dB (``inf`` when the outputs are identical)."""
        ref, out = check_pair(reference, output, self.name)
        mse = (ref - out).pow(2).mean().item()
        return _db(ref.pow(2).max().item(), mse)

    def to_distortion(self, score: float) -> float:
        """``10**(-score/10)``: the mse relative to the peak power."""
        return _db_to_power(score)

    def from_distortion(self, distortion: float) -> float:
        """Inverse of :meth:`to_distortion`: the predicted PSNR of a summed distortion."""
        return _power_to_db(distortion)

    def __repr__(self) -> str:
        return "PSNR()"


class SQNR:
    """Signal-to-quantization-noise ratio of the outputs in dB: ``10 log10(sum(ref**2) / sum(err**2))``.

    Higher is better; distortion is ``10**(-sqnr/10)`` (noise power relative to
    the signal power).
    """

    name = "sqnr"
    higher_is_better = True
    unit = "dB"

    def score(self, reference: torch.Tensor, output: torch.Tensor) -> float:
        """SQNR in dB (``inf`` when the outputs are identical)."""
        ref, out = check_pair(reference, output, self.name)
        return _db(ref.pow(2).sum().item(), (ref - out).pow(2).sum().item())

    def to_distortion(self, score: float) -> float:
        """``10**(-score/10)``: the noise power relative to the signal power."""
        return _db_to_power(score)

    def from_distortion(self, distortion: float) -> float:
        """Inverse of :meth:`to_distortion`."""
        return _power_to_db(distortion)

    def __repr__(self) -> str:
        return "SQNR()"


class MSE:
    """Mean squared error of the outputs. Lower is better; the distortion is the mse itself."""

    name = "mse"
    higher_is_better = False
    unit = ""

    def score(self, reference: torch.Tensor, output: torch.Tensor) -> float:
        """``mean((reference - output)**2)``."""
        ref, out = check_pair(reference, output, self.name)
        return (ref - out).pow(2).mean().item()

    def to_distortion(self, score: float) -> float:
        """The mse (already additive)."""
        return max(0.0, float(score))

    def from_distortion(self, distortion: float) -> float:
        """The predicted mse: the distortion itself."""
        return float(distortion)

    def __repr__(self) -> str:
        return "MSE()"


class KL:
    """Kullback-Leibler divergence ``KL(softmax(ref) || softmax(out))`` in nats.

    The softmax runs over ``dim`` (default the last, e.g. class logits); the result
    is averaged over every other position (samples, tokens). Lower is better; for
    small perturbations KL is a quadratic form of the logit error, so it adds
    across layers like a noise power.

    :param dim: the class dimension of the outputs.
    """

    name = "kl"
    higher_is_better = False
    unit = "nats"

    def __init__(self, dim: int = -1):
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"kl: dim must be an integer, got {dim!r}")
        self.dim = dim

    def score(self, reference: torch.Tensor, output: torch.Tensor) -> float:
        """Mean KL divergence of the output distribution from the reference distribution."""
        ref, out = check_pair(reference, output, self.name)
        if ref.dim() == 0:
            raise ValueError("kl: outputs need a class dimension, got a scalar")
        log_p = torch.log_softmax(ref, dim=self.dim)
        log_q = torch.log_softmax(out, dim=self.dim)
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=self.dim)
        return max(0.0, kl.mean().item())

    def to_distortion(self, score: float) -> float:
        """The KL divergence (additive to second order)."""
        return max(0.0, float(score))

    def from_distortion(self, distortion: float) -> float:
        """The predicted KL divergence: the distortion itself."""
        return float(distortion)

    def __repr__(self) -> str:
        return f"KL(dim={self.dim})"
