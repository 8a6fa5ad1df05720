#!/usr/bin/env python3
"""PyTorch's ``examples/word_language_model`` (an LSTM language model), mirrored by plinius.

The loop is the one that example writes: epochs of truncated-BPTT batches carrying the LSTM's
hidden state, an evaluation on the validation text at the end of every epoch, the best model
saved and the learning rate annealed when the validation loss does not improve (with AdamW
here). ``TorchMirror.epochs``/``batches`` drive it: kill the process at any moment (SIGKILL,
mid-batch or mid-evaluation) and start it again with the same flags; it goes on from the last
mirror, and its losses and final weights are bit-identical to an uninterrupted run's::

    plinius keygen --out owner.key
    python examples/torch_word_lm.py --backend romulus:/dev/shm/lm.pool --key-file owner.key
    plinius verify --backend romulus:/dev/shm/lm.pool --key-file owner.key

The default text (``examples/data/word_lm/``) is a short story written for this repository.
Needs ``pip install 'plinius[torch]'``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plinius.torch import TorchMirror

DATA = Path(__file__).resolve().parent / "data" / "word_lm"


class Dictionary:
    def __init__(self) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add_word(self, word: str) -> int:
        if word not in self.word2idx:
            self.idx2word.append(word)
            self.word2idx[word] = len(self.idx2word) - 1
        return self.word2idx[word]


class Corpus:
    """``train``, ``valid``, ``test``: 1-D tensors of word ids (``<eos>`` at each line end)."""

    def __init__(self, path: Path) -> None:
        self.dictionary = Dictionary()
        self.train = self.tokenize(path / "train.txt")
        self.valid = self.tokenize(path / "valid.txt")
        self.test = self.tokenize(path / "test.txt")

    def tokenize(self, path: Path) -> torch.Tensor:
        ids: list[int] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            ids += [self.dictionary.add_word(w) for w in [*line.split(), "<eos>"]]
        return torch.tensor(ids, dtype=torch.int64)


class RNNModel(nn.Module):
    """Encoder, LSTM, decoder, dropout on both sides of the LSTM (as the PyTorch example)."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout if nlayers > 1 else 0.0)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nhid, self.nlayers = nhid, nlayers

    def forward(
        self, x: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        emb = self.drop(self.encoder(x))
        output, hidden = self.rnn(emb, hidden)
        return self.decoder(self.drop(output)).view(-1, self.decoder.out_features), hidden

    def init_hidden(self, bsz: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.zeros(self.nlayers, bsz, self.nhid),
            torch.zeros(self.nlayers, bsz, self.nhid),
        )


def batchify(data: torch.Tensor, bsz: int) -> torch.Tensor:
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].view(bsz, -1).t().contiguous()


def get_batch(source: torch.Tensor, i: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)


def repackage_hidden(h: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Cut the graph at the batch boundary: the values go on, the history does not."""
    return tuple(v.detach() for v in h)


def evaluate(model: RNNModel, source: torch.Tensor, bsz: int, bptt: int) -> float:
    """Mean cross-entropy over ``source`` (eval mode: no dropout, no RNG drawn)."""
    model.eval()
    total = 0.0
    hidden = model.init_hidden(bsz)
    with torch.no_grad():
        for i in range(0, source.size(0) - 1, bptt):
            data, targets = get_batch(source, i, bptt)
            output, hidden = model(data, hidden)
            total += len(data) * nn.functional.cross_entropy(output, targets).item()
    return total / (len(source) - 1)


def save_best(model: nn.Module, path: str) -> None:
    """The best model so far, replaced whole (a kill leaves the old file or the new one: an
    epoch's end may run twice, after a kill, and must be safe to redo)."""
    from safetensors.torch import save_file

    tmp = f"{path}.tmp"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)


def digest(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> str:
    """SHA-256 over every parameter and buffer (and optimizer state tensor), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    if optimizer is not None:
        for pid, st in sorted(optimizer.state_dict()["state"].items()):
            for key, v in sorted(st.items()):
                h.update(f"{pid}.{key}".encode())
                h.update(v.numpy().tobytes() if isinstance(v, torch.Tensor) else repr(v).encode())
    return h.hexdigest()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--backend", required=True, help="backend spec, e.g. romulus:/dev/shm/lm.pool")
    p.add_argument("--key-file", required=True, help="the owner's key file (plinius keygen)")
    p.add_argument("--data", type=Path, default=DATA, help="train.txt, valid.txt, test.txt")
    p.add_argument("--emsize", type=int, default=32)
    p.add_argument("--nhid", type=int, default=32)
    p.add_argument("--nlayers", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05, help="initial AdamW learning rate")
    p.add_argument("--clip", type=float, default=0.25, help="gradient clipping")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--bptt", type=int, default=8, help="sequence length")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=1111)
    p.add_argument("--log-interval", type=int, default=5, help="print the mean loss every N")
    p.add_argument("--save", help="where the best model goes (safetensors)")
    p.add_argument("--every", type=int, default=1, help="mirror every N batches")
    p.add_argument("--async", dest="asynchronous", action="store_true", help="seal in background")
    p.add_argument("--fresh", action="store_true", help="start over (ignore an existing mirror)")
    a = p.parse_args(argv)
    if min(a.epochs, a.batch_size, a.bptt, a.log_interval, a.every) < 1:
        p.error("--epochs, --batch-size, --bptt, --log-interval and --every must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)  # the dropout masks come from torch's RNG, which is mirrored
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    corpus = Corpus(args.data)
    train_data = batchify(corpus.train, args.batch_size)
    val_data = batchify(corpus.valid, 2)
    test_data = batchify(corpus.test, 2)
    ntokens = len(corpus.dictionary.idx2word)
    model = RNNModel(ntokens, args.emsize, args.nhid, args.nlayers, args.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    nbatches = len(range(0, train_data.size(0) - 1, args.bptt))

    # the loop's own state: the hidden state carried from batch to batch (tensors: sealed as
    # records), the running loss, the best validation loss (JSON values)
    state: dict[str, Any] = {
        "hidden": model.init_hidden(args.batch_size),
        "total_loss": 0.0,
        "best_val_loss": None,
    }
    with TorchMirror(
        model,
        optimizer,
        backend=args.backend,
        key_file=args.key_file,
        every=args.every,
        asynchronous=args.asynchronous,
        extra_state=state,
        fresh=args.fresh,
    ) as mirror:
        mirror.restore()
        mirror.check_determinism()  # one warning line if a resume could differ
        epoch0, batch0 = mirror.position(nbatches)
        print(f"starting at epoch {epoch0} batch {batch0} of {nbatches}", flush=True)
        for epoch in mirror.epochs(args.epochs, nbatches):
            model.train()
            for batch in mirror.batches():
                data, targets = get_batch(train_data, batch * args.bptt, args.bptt)
                hidden = repackage_hidden(state["hidden"])
                optimizer.zero_grad()
                output, hidden = model(data, hidden)
                loss = nn.functional.cross_entropy(output, targets)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                optimizer.step()
                state["hidden"] = hidden  # carried to the next batch (and into the mirror)
                state["total_loss"] += loss.item()
                print(f"| epoch {epoch} | batch {batch} | loss {loss.item()!r}", flush=True)
                if (batch + 1) % args.log_interval == 0:
                    cur = state["total_loss"] / args.log_interval
                    lr = optimizer.param_groups[0]["lr"]
                    print(f"|   lr {lr:.6f} | loss {cur:.3f} | ppl {math.exp(cur):.2f}", flush=True)
                    state["total_loss"] = 0.0
            # the end of the epoch: mirrored with its last batch when this body ends
            print(f"| evaluating epoch {epoch}", flush=True)
            val_loss = evaluate(model, val_data, 2, args.bptt)
            print(f"| end of epoch {epoch} | valid loss {val_loss!r}", flush=True)
            best = state["best_val_loss"]
            if best is None or val_loss < best:
                state["best_val_loss"] = val_loss
                if args.save:
                    save_best(model, args.save)
            else:
                for group in optimizer.param_groups:
                    group["lr"] /= 4.0  # anneal when the validation loss did not improve
            state["hidden"] = model.init_hidden(args.batch_size)  # the next epoch starts anew
            state["total_loss"] = 0.0

    test_loss = evaluate(model, test_data, 2, args.bptt)
    print(f"| end of training | test loss {test_loss!r} | ppl {math.exp(test_loss):.2f}")
    print(f"model sha256 {digest(model)}")
    print(f"state sha256 {digest(model, optimizer)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
