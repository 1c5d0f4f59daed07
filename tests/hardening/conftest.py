"""Shared pieces of the hardening tests: a private registry with file backends that can fail on purpose."""

from __future__ import annotations

import pytest
import torch

import bitsmith


class FileBackends:
    """Export backends of a private registry: ``bin`` writes the state dict, ``broken`` fails halfway."""

    @bitsmith.hookimpl
    def export_backend(self, register):
        class Bin:
            description, suffix = "state dict", ".bin"

            def finalize(self, model):
                return model

            def save(self, model, path, *, example_inputs=None):
                torch.save(model.state_dict(), path)
                return path

        class Broken(Bin):
            def save(self, model, path, *, example_inputs=None):
                with open(path, "wb") as fh:
                    fh.write(b"half a file")
                raise RuntimeError("disk full")

        register("bin", Bin())
        register("broken", Broken())


@pytest.fixture
def file_registry():
    """A registry holding only :class:`FileBackends`."""
    return bitsmith.plugins.Registry(autoload=False, plugins=[FileBackends()])
