"""What drives a session for a user: ``plinius train``'s loop (the PyTorch adapter, TorchMirror,
lives with PyTorch in :mod:`plinius.torch`)."""
