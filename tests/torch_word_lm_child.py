"""examples/torch_word_lm.py as test_torch_word_lm.py runs it, with a way to stop inside an
evaluation: ``python torch_word_lm_child.py HANG ARGS...`` runs the example with ARGS; with
HANG = k > 0 its k-th evaluation of this process computes the loss, prints ``| hanging in
evaluation``, and waits to be SIGKILLed (so the kill lands inside it, whatever the speed)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "torch_word_lm.py"


def main() -> int:
    hang, argv = int(sys.argv[1]), sys.argv[2:]
    spec = importlib.util.spec_from_file_location("torch_word_lm", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    evaluate = example.evaluate
    calls = 0

    def hanging(*args: Any) -> float:
        nonlocal calls
        calls += 1
        loss = float(evaluate(*args))
        if calls == hang:
            print("| hanging in evaluation", flush=True)
            while True:
                time.sleep(60)
        return loss

    example.evaluate = hanging
    return int(example.main(argv))


if __name__ == "__main__":
    sys.exit(main())
