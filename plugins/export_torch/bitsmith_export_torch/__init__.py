"""bitsmith-export-torch: the ``"torch"`` export backend (plain dense PyTorch; see :mod:`.backend`)."""
