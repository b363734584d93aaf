"""One GPU per training when several run at once on one machine (`dvc queue start -j 4` on 4 GPUs): each
train stage holds a lock on the GPU it uses, so parallel experiments spread over the free GPUs instead
of all piling onto GPU 0. The locks are the machine's (GPUs are), in the system's temporary folder, and
free themselves when the process ends, however it ends (flock)."""

import fcntl
import os
import tempfile
import time
from pathlib import Path

LOCKS = Path(tempfile.gettempdir()) / "imgpipe-gpu-locks"
_held: list[int] = []  # the descriptors of the locks this process holds: open until it exits


def claim(gpus: list[str], folder: Path = LOCKS, wait: float = 1.0, say=print) -> str:
    """The first of `gpus` (the machine's names for them: indices or UUIDs) that no other process holds,
    now held by this one; while every one is held, waits (`wait` seconds between tries), saying so once."""
    folder.mkdir(parents=True, exist_ok=True)
    waiting = False
    while True:
        for gpu in gpus:
            descriptor = os.open(folder / f"gpu{gpu}.lock", os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                continue
            _held.append(descriptor)
            return gpu
        if not waiting:
            say(f"every GPU ({', '.join(gpus)}) is in use by another training; waiting for one to be free")
            waiting = True
        time.sleep(wait)


def release_all() -> None:
    while _held:
        os.close(_held.pop())


def use_a_free_gpu(say=print) -> None:
    """Where several GPUs are visible, make a free one this process's CUDA device (cuda:<i>, and plain
    `cuda` too), held until the process ends."""
    import torch

    count = torch.cuda.device_count()
    if count < 2:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = visible.split(",")[:count] if visible else [str(i) for i in range(count)]  # the lock names: the machine's
    name = claim(names, say=say)
    torch.cuda.set_device(names.index(name))
    say(f"training on GPU {name}, free among {count} (train.devices: 1)")
