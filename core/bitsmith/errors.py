"""Exception types shared by the core and the plugins."""

from __future__ import annotations


class BitsmithError(Exception):
    """Base class for every error bitsmith raises on purpose."""


class ConfigError(BitsmithError, ValueError):
    """A config could not be built or loaded.

    ``lines`` holds one message per problem, each starting with the dotted path of
    the offending field (``global_config.op_state_spec.weight.n_bits: ...``).
    """

    def __init__(self, lines: list[str] | str):
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))


class PluginError(BitsmithError, LookupError):
    """A plugin could not be loaded, or a requested implementation does not exist."""


class CompressionError(BitsmithError, ValueError):
    """A layer cannot be compressed as asked; the message names the layer."""
