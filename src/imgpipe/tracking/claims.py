"""Runs in the making on a store several publishes share (queued experiments side by side, machines on one
tracking server): which process is recording a run, whether it still is, and its heartbeat.

A run in the making carries PUBLISHER, "machine pid start": on this machine (same boot, same process namespace)
whether that process still runs is known exactly. A run from elsewhere (another machine, a container) cannot be
asked: its process bumps HEARTBEAT every HEARTBEAT_SECONDS while it records, and a heartbeat that the waiting
process sees unchanged for STALE_SECONDS of its own clock marks the run abandoned (no two machines' clocks are
compared). On the embedded store publishes take turns (store.store_lock), so nothing there is ever in progress.
"""

import contextlib
import functools
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from imgpipe.tracking.store import takes_turns

PUBLISHER = "imgpipe.publisher"  # tag: "machine pid start" of the process recording the run, until it is finished
HEARTBEAT = "imgpipe.heartbeat"  # tag: a count its process bumps while it records the run (not on the embedded store)
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0  # a heartbeat unchanged this long, on the waiter's clock: its process is gone
LEASE_SECONDS = 15 * 60  # the longest a run is waited for, alive or not (a process hung with its heartbeat going)
WAIT_SECONDS = 1.0  # between looks at a run in progress


_PROC = Path("/proc/self/stat").exists()  # Linux: a process's exact start is read from /proc


@functools.cache  # the same for the life of the process; asked at every look at a run in progress
def machine() -> str:
    """This machine and its process namespace, where a pid names one process (containers may share a hostname)."""
    try:
        return f"{Path('/proc/sys/kernel/random/boot_id').read_text().strip()}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux
        return socket.gethostname()


def started(pid: int) -> str | None:
    """When process `pid` started, exactly (clock ticks since boot, from /proc; else psutil's time), if it can be read."""
    if _PROC:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        except OSError:
            return None
    try:
        return f"{psutil.Process(pid).create_time():.3f}"
    except psutil.Error:
        return None


def publisher() -> str:
    """This process's PUBLISHER tag."""
    return f"{machine()} {os.getpid()} {started(os.getpid())}"


def _alive(pid: int, start: str) -> bool:
    """Whether the process that started at `start` as `pid` on this machine still runs: gone only when no process has
    that pid, or another one does; one this process may not look at (another user's, /proc with hidepid) counts as
    alive, for the lease to bound."""
    now = started(pid)
    if now is not None:
        return now == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


class Watch:
    """What this process has seen of runs in the making: when it first saw each, and each heartbeat since."""

    def __init__(self) -> None:
        self.first_seen: dict[str, float] = {}
        self.beats: dict[str, tuple[str | None, float]] = {}  # run id: (its heartbeat, when it was first seen so)

    def in_progress(self, run) -> bool:
        """Whether another publish may still finish this run. Not one finished, failed or killed; not one this process
        began (a run it gave up); not one an older imgpipe began (no PUBLISHER); none on the embedded store."""
        try:
            where, pid, start = run.data.tags[PUBLISHER].split()
            pid = int(pid)
        except (KeyError, ValueError):
            return False
        if run.info.status != "RUNNING" or takes_turns():
            return False
        now = time.monotonic()
        if now - self.first_seen.setdefault(run.info.run_id, now) > LEASE_SECONDS:
            return False
        if where == machine():
            return pid != os.getpid() and _alive(pid, start)
        beat = run.data.tags.get(HEARTBEAT)
        seen, since = self.beats.get(run.info.run_id, (None, None))
        if since is None or beat != seen:
            self.beats[run.info.run_id] = (beat, now)
            return True
        return now - since < STALE_SECONDS


def pause() -> None:
    """Between looks at runs in progress."""
    time.sleep(WAIT_SECONDS)


@contextlib.contextmanager
def heartbeat(client, run_id: str) -> Iterator[None]:
    """Bump the run's HEARTBEAT every HEARTBEAT_SECONDS while the block records it (on a store where publishes do not
    take turns), for a publish elsewhere to tell a run in progress from an abandoned one."""
    if takes_turns():
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        count = 0
        while not stop.wait(HEARTBEAT_SECONDS):
            count += 1
            with contextlib.suppress(Exception):  # a beat missed: the record itself fails, or the next beat comes
                client.set_tag(run_id, HEARTBEAT, str(count))

    thread = threading.Thread(target=beat, name=f"heartbeat of MLflow run {run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
