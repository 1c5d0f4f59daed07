"""A third-party export backend: ``backend="npz"`` writes a model to a NumPy ``.npz`` file.

``finalize`` returns the model unchanged: the prepared model already computes with
its compressed weights in eager PyTorch. ``save`` stores each palettized tensor as
its LUT and indices (``<name>.lut``, ``<name>.indices``) and every other tensor of
the state dict densely; ``load`` rebuilds the dense weights with the same values
(``FileExportBackend`` + ``ReadableExportBackend``).
"""

from __future__ import annotations

from pathlib import Path

import bitsmith


class NpzBackend:
    """Export backend writing ``.npz`` files."""

    description = "NumPy .npz: LUT + indices per palettized tensor, other tensors dense"
    suffix = ".npz"

    def finalize(self, model):
        """The model as it is: its compressed weights are already in effect."""
        return model

    def save(self, model, path, *, example_inputs=None) -> Path:
        """Write ``model`` to ``path`` (written beside it, then renamed); returns the path."""
        import json
        import os
        import tempfile

        import numpy as np

        from bitsmith import compressed
        from bitsmith.config import to_dict

        arrays, meta = {}, {}
        for module_name, _, tensor, record in compressed.iter_records(model):
            name = f"{module_name}.{tensor}" if module_name else tensor
            if not isinstance(record, compressed.PalettizedTensor) or name in meta:
                continue
            meta[name] = {"spec": to_dict(record.spec), "shape": list(record.shape),
                          "dtype": str(record.dtype).removeprefix("torch."), "axis": record.axis}
            parts = {"lut": record.lut, "indices": record.indices, "scale": record.per_channel_scale}
            if record.outliers is not None:
                parts.update(outlier_index=record.outliers.indices, outlier_values=record.outliers.values)
            for part, value in parts.items():
                if value is not None:
                    arrays[f"{name}.{part}"] = value.detach().cpu().numpy()
        for name, value in model.state_dict().items():
            if name not in meta and "_bitsmith" not in name:
                arrays[name] = value.detach().cpu().numpy()
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def load(self, path, model_factory):
        """A model from ``model_factory()`` with the file's weights; palettized ones carry their records again."""
        import json

        import numpy as np
        import torch

        from bitsmith import compressed
        from bitsmith.config import PalettizationSpec, from_dict

        data = np.load(path)
        meta = json.loads(bytes(data["__meta__"]).decode())
        model = model_factory() if callable(model_factory) else model_factory
        dense = {name: torch.from_numpy(data[name]) for name in data.files if name != "__meta__"
                 and not any(name.startswith(f"{p}.") for p in meta)}
        model.load_state_dict(dense, strict=False)
        for name, info in meta.items():
            part = {key: torch.from_numpy(data[f"{name}.{key}"]) for key in
                    ("lut", "indices", "scale", "outlier_index", "outlier_values") if f"{name}.{key}" in data.files}
            outliers = (compressed.SparseOutliers(part["outlier_index"], part["outlier_values"])
                        if "outlier_index" in part else None)
            record = compressed.PalettizedTensor(
                lut=part["lut"], indices=part["indices"], spec=from_dict(info["spec"], PalettizationSpec),
                shape=tuple(info["shape"]), dtype=getattr(torch, info["dtype"]), axis=info["axis"],
                per_channel_scale=part.get("scale"), outliers=outliers)
            module_name, _, tensor = name.rpartition(".")
            compressed.apply(model.get_submodule(module_name), tensor, record)
        return model.eval()

@bitsmith.hookimpl
def export_backend(register):
    """Register ``"npz"``."""
    register("npz", NpzBackend())
