"""``torch``: the PyTorch adapter (TorchMirror) against what PyTorch users use (torch.save,
safetensors, DCP, torch.save + AES-GCM + fsync) on the named real-model workloads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from plinius.lab.bench.contenders import Contender
from plinius.lab.bench.registry import NotRun, Section, SuiteOptions, WorkloadContext, register
from plinius.lab.bench.stats import speedup
from plinius.lab.bench.targets import measured, missing
from plinius.lab.bench.verdicts import TargetTable

NAME = "torch"
MIRROR = "torchmirror@romulus"
#: what :func:`plinius.lab.bench.torch_section.torch_contenders` builds on each directory, in order
KINDS = ("torch.save", "torch.save+aes-gcm+fsync", "safetensors", "dcp.save", "dcp.async_save")
#: the directories the suite's workloads give (:func:`plinius.lab.bench.suite.side_dirs`)
PLACES = ("tmpfs", "ssd")


def contenders(ctx: WorkloadContext) -> Sequence[Contender]:
    """TorchMirror on ``romulus`` in RAM beside the peers, with a throw-away owner key and
    simulated CPU next to the peers' files (removed with them: a benchmark leaves no counter
    on this machine's platform)."""
    from plinius.core.crypto import generate_key, write_key_file
    from plinius.enclave.platform import SimulatedPlatform
    from plinius.lab.bench import torch_section
    from plinius.lab.plan import default_spec

    why = torch_section.torch_unavailable()
    if why:
        raise NotRun(why)
    if ctx.model.name.startswith("size-"):
        raise NotRun(
            "not run: the PyTorch section runs on the real-model workloads (--workloads), not "
            "on the paper's size-N models"
        )
    dirs = ctx.scratch_dirs()
    shm = dirs.get("tmpfs")
    if shm is None:
        raise ValueError("the torch section needs the peers' tmpfs directory")
    key_file = shm / "torch-owner.key"
    if not key_file.exists():
        write_key_file(key_file, generate_key())
    platform = SimulatedPlatform(shm / "torch-platform", state_dir=shm / "torch-state")
    mirror_dir = shm / f"torch-mirror-{ctx.model.name}"
    mirror_dir.mkdir(exist_ok=True)
    spec = default_spec("romulus", mirror_dir)
    return list(
        torch_section.torch_contenders(
            ctx.model.name, dirs, [spec], key_file, engine=ctx.engine.name, platform=platform
        )
    )


def ids(opts: SuiteOptions) -> list[str]:
    """TorchMirror on ``romulus``, then every peer on every directory, as :func:`contenders`
    builds them."""
    return [MIRROR, *(f"{kind}@{place}" for place in PLACES for kind in KINDS)]


def targets(doc: Mapping[str, Any], t: TargetTable) -> None:
    """TorchMirror on ``romulus`` against ``torch.save``/``torch.load`` on tmpfs and the
    hand-made ``torch.save`` + AES-GCM + fsync on ssd, at the first workload the torch section
    ran on (ResNet-50 + SGD-momentum by default)."""
    ran = [c for c in doc.get("contenders") or [] if c["section"] == NAME and c.get("ops")]
    wl = next((c["workload"] for c in ran if c.get("id") == f"{NAME}:{MIRROR}"), None)
    runs = measured(doc, wl, NAME)

    def get(ident: str) -> dict[str, Any] | None:
        return next((c for c in runs if c.get("id") == f"{NAME}:{ident}"), None)

    mine = get(MIRROR)
    for key, what, bar, other, op in (
        (
            "torch_save_vs_torch_save_tmpfs",
            "TorchMirror (romulus) save ≥ 3× torch.save (tmpfs, plaintext)",
            3.0,
            "torch.save@tmpfs",
            "save",
        ),
        (
            "torch_save_vs_torch_aes_fsync_ssd",
            "TorchMirror (romulus) save ≥ 5× torch.save + AES-GCM + fsync (ssd)",
            5.0,
            "torch.save+aes-gcm+fsync@ssd",
            "save",
        ),
        (
            "torch_restore_vs_torch_load_tmpfs",
            "TorchMirror (romulus) restore faster than torch.load (tmpfs)",
            1.0,
            "torch.save@tmpfs",
            "restore",
        ),
    ):
        them = get(other)
        if mine is None or them is None or op not in them["ops"] or op not in mine["ops"]:
            why = missing([(MIRROR, mine), (other, them)]) or "not run: no samples"
            if not ran:
                why = "not run: the torch section did not run (torch, --workloads)"
            t.add(key, what, bar, None, why=why, workload=wl)
            continue
        iv = speedup(
            mine["ops"][op]["seconds"],
            them["ops"][op]["seconds"],
            mine["nbytes"] / them["nbytes"] if them["nbytes"] else 1.0,
        )
        t.add(key, what, bar, iv, sides=f"{mine['name']} {op} vs {them['name']} {op}", workload=wl)


register(
    Section(
        NAME,
        "TorchMirror against torch.save, safetensors and DCP on the real-model workloads",
        40,
        contenders=contenders,
        targets=targets,
        ids=ids,
    )
)
