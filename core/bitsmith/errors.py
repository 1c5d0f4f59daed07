"""Exception types shared by the core and the plugins."""

from __future__ import annotations


class BitsmithError(Exception):
    """Base class for every error bitsmith raises on purpose."""


class ConfigError(BitsmithError, ValueError):
    """A config could not be built or loaded.

    ``lines`` holds one message per problem, each starting with the dotted path of
    the offending field (``global_config.op_state_spec.weight.n_bits: ...``). A line
    longer than :data:`MAX_LINE` characters (a multi-megabyte bad value echoed back)
    is cut in the middle.
    """

    def __init__(self, lines: list[str] | str):
        self.lines = [_cut(str(line)) for line in ([lines] if isinstance(lines, str) else lines)]
        super().__init__("\n".join(self.lines))


MAX_LINE = 1000
"""Longest :class:`ConfigError` line kept whole; longer ones keep their start and end."""


def _cut(line: str) -> str:
    if len(line) <= MAX_LINE:
        return line
    keep = MAX_LINE // 2 - 20
    return f"{line[:keep]}...<{len(line) - 2 * keep} characters cut>...{line[-keep:]}"


class PluginError(BitsmithError, LookupError):
    """A plugin could not be loaded, or a requested implementation does not exist."""


class CompressionError(BitsmithError, ValueError):
    """A layer cannot be compressed as asked; the message names the layer."""
