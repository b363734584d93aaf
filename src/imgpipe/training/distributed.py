"""Data-parallel training: the process group a training runs in, and how the train stage starts one.

PyTorch's own engine does the work: `torchrun` starts one process per device (or joins the group an
outer torchrun or srun made: RANK, WORLD_SIZE and MASTER_ADDR set), DistributedDataParallel averages
the gradients (NCCL on GPUs, gloo on CPUs). The loop in imgpipe.training.loop stays one loop: every rank draws
the same seeded global batches and trains on its share of each; sums (losses, correct counts,
validation) are all-reduced, so every rank sees the same figures and makes the same decisions; rank 0
alone writes files.
"""

import contextlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from imgpipe.errors import require

TIMEOUT = timedelta(minutes=10)  # a collective no rank completes by then fails the stage instead of hanging
# torchrun's environment for restarts that work (torch 2.14): by default its agent keeps one store for the workers
# across restarts, so restarted ranks may read the addresses the previous ranks published (gloo: "Connection
# refused", restart after restart, or a hang), and an agent that rejoins after its machine was lost waits forever.
# With this each restart starts from a store of its own.
RESTARTABLE = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


@dataclass(frozen=True)
class ProcessGroup:
    rank: int = 0
    world: int = 1
    local_rank: int = 0  # this process's device on its machine (cuda:<local_rank>)

    @property
    def leader(self) -> bool:
        """The rank that writes the checkpoint, metrics, curves and resume state."""
        return self.rank == 0

    def share(self, count: int) -> slice:
        """This rank's rows of a batch of `count`: contiguous parts that differ in size by at most one."""
        base, extra = divmod(count, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over all ranks (a no-op in a single process)."""
        if self.world > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, value: object) -> list:
        """Every rank's `value`, in rank order (a one-item list in a single process)."""
        if self.world == 1:
            return [value]
        gathered = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered

    def share_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (batch norm's statistics) on every rank. DDP sends them only before a forward pass, so
        after an epoch's last step each rank holds its own share's update."""
        if self.world > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to train: DistributedDataParallel around the model where there are several ranks."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


SINGLE = ProcessGroup()


def launched() -> bool:
    """Whether torchrun or srun started this process as a rank of a group. An sbatch script's own shell has
    SLURM_PROCID 0 and the job's SLURM_NTASKS too, but no job step: a stage run there (`dvc repro` after the srun)
    starts its own ranks rather than wait for a group that never forms."""
    env = os.environ
    return "RANK" in env and "WORLD_SIZE" in env or all(key in env for key in ("SLURM_PROCID", "SLURM_STEP_ID", "MASTER_ADDR"))


def launched_world() -> int:
    """The number of ranks of the group torchrun or srun started this process in."""
    return int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1)))


def join(device_type: str) -> ProcessGroup:
    """Join the group this process was started in (torchrun's or srun's environment)."""
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))
    world = launched_world()
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world, timeout=TIMEOUT)
    return ProcessGroup(rank, world, local_rank)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def device_count(devices: int | str, device_type: str) -> int:
    """train.devices as a number: `auto` is every visible GPU (1 without CUDA)."""
    if devices == "auto":
        return max(torch.cuda.device_count(), 1) if device_type == "cuda" else 1
    return int(devices)


def require_visible(processes: int, device_type: str) -> None:
    """Ranks this machine starts itself, one per GPU: more than are visible is refused (InvalidSetting `devices`), as
    the ranks past them would fail, and torchrun restart them, until its budget is spent. (Ranks an outer launcher
    started see what it gave them: srun --gpus-per-task 1 shows each one GPU; cuda_index picks it.)"""
    if device_type not in ("cuda", "cpu"):  # no collective backend for MPS: each rank's first all-reduce would fail
        require(processes == 1, "devices", f"{processes} processes on {device_type}: several processes train on CUDA GPUs "
                                           "or the CPU (gloo) only; set 1")
    if device_type != "cuda":  # gloo processes on the CPU: as many as asked
        return
    visible = torch.cuda.device_count()
    require(processes <= visible, "devices",
            f"{processes} processes, one per GPU, but {visible} GPU{'s' * (visible != 1)} visible (CUDA_VISIBLE_DEVICES)")


def cuda_index(local_rank: int) -> int:
    """This rank's GPU among those visible to it: its local rank, or where a launcher binds one GPU to each task
    (srun --gpus-per-task 1: each sees a single cuda:0) that one."""
    return local_rank % torch.cuda.device_count()


def torchrun_command(processes: int, script: list[str], max_restarts: int = 0, log_dir: str | None = None) -> list[str]:
    """One machine, `processes` ranks of `script` (python arguments), as torchrun starts them; when one fails,
    torchrun stops the others and starts them all again, up to `max_restarts` times (run it with RESTARTABLE).
    `log_dir`: the agent's folder for its attempts and ranks (by default a new temporary one it never removes)."""
    logs = ["--log-dir", log_dir] if log_dir else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            "--max-restarts", str(max_restarts), *logs, *script]


def launch(processes: int, script: list[str], max_restarts: int) -> int:
    """torchrun_command run to its end, with RESTARTABLE; its exit status. Its agent's folder goes with it, unless
    the user named one (torchrun's PET_LOG_DIR, e.g. to keep the ranks' output with PET_REDIRECTS)."""
    named = bool(os.environ.get("PET_LOG_DIR"))  # then no --log-dir: torchrun reads it
    with contextlib.nullcontext() if named else tempfile.TemporaryDirectory(prefix="imgpipe-torchrun-", ignore_cleanup_errors=True) as logs:
        return subprocess.run(torchrun_command(processes, script, max_restarts, logs), env=os.environ | RESTARTABLE).returncode


def restart_count() -> int:
    """How many times torchrun has restarted this process's group (0: its first start, or no torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
