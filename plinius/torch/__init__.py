"""PyTorch training state through the same encrypted, fresh, persistent mirrors.

The ``torch`` extra (``pip install 'plinius[torch]'``).
Only this package imports torch::

    from plinius.torch import TorchMirror

    with TorchMirror(model, opt, backend="romulus:/dev/shm/run.pool", key_file="k.key") as m:
        for it in range(m.restore(), iterations):
            train_step()
            m.step(it + 1)
"""

from __future__ import annotations

from plinius.torch.mirror import TorchMirror
from plinius.torch.staging import Staging
from plinius.torch.state import TorchState

__all__ = ["Staging", "TorchMirror", "TorchState"]
