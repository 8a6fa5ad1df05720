"""PyTorch training state through the same encrypted, fresh, persistent mirrors.

The ``torch`` extra (``pip install 'plinius[torch]'``).
Only this package imports torch::

    from plinius.torch import TorchMirror

    with TorchMirror(model, opt, backend="romulus:/dev/shm/run.pool", key_file="k.key",
                     extra_state=loop) as m:
        for epoch in m.epochs(epochs, batches_per_epoch):  # restores; the epochs left
            for batch in m.batches():  # the batches left, each mirrored after its body
                train_step(batch)
            evaluate()  # the epoch's end: mirrored with its last batch
"""

from __future__ import annotations

from plinius.torch.collectives import init_ranks
from plinius.torch.mirror import TorchMirror
from plinius.torch.staging import Staging
from plinius.torch.state import TorchState

__all__ = ["Staging", "TorchMirror", "TorchState", "init_ranks"]
