"""A warm start for the stages the tests run.

The suite starts some 75 stage processes (`python stages/train.py cnn 0`, run by DVC); most of their CPU time went
to importing torch, its compiler (every optimizer imports torch._dynamo as it is made) and MLflow: about 150 of the
suite's 370 CPU-seconds on 2 cores (measured 2026-12-03). Here one server for the test run imports them once; the
`python` that test projects find first on PATH is a small client that hands its command, working folder,
environment and standard streams to that server, which forks, and the fork runs the script as `python` would.
The client passes on the signals sent to it and exits as the fork did (its exit status, or the signal that killed
it), so DVC and the tests see the process they started; a client killed outright hangs up, and the server kills its
fork (so does the server's own end). This is what multiprocessing's forkserver does with set_forkserver_preload.

Inside a fork, sys.executable is the client, so the Python processes a stage starts (torchrun's agents and their
ranks, `python -u script`; the sweep's workers) fork warm too: one import of torch for the whole test run, not one a
rank (the elastic benchmark alone started some 20 cold interpreters, 45 CPU-seconds).

What keeps it honest:
- the server imports only third-party packages, never imgpipe: each project's fork imports its own copy's code;
- a command that is not a script or `-m module` (after `-u`, the one interpreter option taken), or an environment
  that differs from the server's in what an interpreter or these packages read as they start (PYTHON*, OMP_*, LD_*,
  MPL*, ...), starts cold, as before;
- IMGPIPE_TESTS_COLD=1 starts every stage cold: the suite must pass either way (it does everywhere but Linux);
- tests/test_warm_python.py compares a warm start with a cold one: output (buffered or not), exit status, signals,
  tracebacks and sys.excepthook, threads and atexit at the end, folder, argv, umask; scripts and modules.
What still differs: sys.flags (the server's; `-u` shows in the streams, not in sys.flags.unbuffered), sys.executable
(the client, above), the process group (the server's: a signal to the client's group reaches the client, which
passes it on to its fork, but not what the fork started), file descriptors beyond the standard three (a
`subprocess` call with pass_fds needs a cold start: another interpreter option or environment gives one), and
warnings the preloaded packages give as they import (its log's).
"""

import atexit
import builtins
import ctypes
import importlib.machinery
import io
import json
import os
import runpy
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import NamedTuple

# torch._dynamo: every optimizer imports it as it is made (1.7 CPU-s); the SQLAlchemy store: every publish.
PRELOAD = ("numpy", "yaml", "PIL.Image", "matplotlib", "torch", "torch._dynamo", "mlflow", "mlflow.store.tracking.sqlalchemy_store")
# What an interpreter, or a preloaded package, reads from the environment as it starts (not when it is used):
# a fork whose environment differs here would not be the process a cold start gives, so it starts cold. Not KMP_*:
# Intel's OpenMP reads them, and torch's Linux wheels use GNU's (scikit-learn sets two as a test imports it).
STARTUP_VARIABLES = ("PYTHON", "OMP_", "GOMP_", "MKL_", "OPENBLAS_", "GOTO", "CUDA_", "TORCH", "PYTORCH", "LD_", "MPL",
                     "MATPLOTLIB", "NUMPY", "HOME", "XDG_", "LANG", "LC_", "TMPDIR", "TZ")
# Read at startup too, but only to open the standard streams, which a fork opens anew from its own environment.
OPENED_IN_THE_FORK = ("PYTHONUNBUFFERED",)
# Named like those, but read only as torch.distributed is used, never as torch imports: torchrun sets them for its ranks.
READ_WHEN_USED = ("TORCHELASTIC_", "TORCH_NCCL_", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE")
SOCKET_VARIABLE = "IMGPIPE_TESTS_WARM_PYTHON"
FOLDER_VARIABLE = "IMGPIPE_TESTS_WARM_PYTHON_FOLDER"
_HEADER = 8  # bytes of a request's length
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _startup(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if k.startswith(STARTUP_VARIABLES) and k not in OPENED_IN_THE_FORK and not k.startswith(READ_WHEN_USED)}


# The client: the `python` first on a test project's PATH.

def client() -> None:
    """Run `python ARGS` in a fork of the warm server where it can, else exec the real interpreter (cold)."""
    args = sys.argv[1:]
    path = os.environ.get(SOCKET_VARIABLE)
    if path and _warm_command(args):
        try:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.connect(path)
        except OSError:  # no server (yet): start cold
            pass
        else:
            _run_in_fork(connection, args)
    os.execv(sys.executable, [sys.executable, *args])  # the full path: `python` on PATH is this file


def _warm_command(args: list[str]) -> bool:
    """A script (`stages/train.py cnn 0`) or a module (`-m imgpipe.sweep`), with no interpreter options but `-u`
    (torchrun starts its ranks `python -u script`)."""
    if args[:1] == ["-u"]:
        args = args[1:]
    if args[:1] == ["-m"]:
        return len(args) > 1
    return bool(args) and args[0].endswith(".py") and os.path.isfile(args[0])


def _run_in_fork(connection: socket.socket, args: list[str]) -> None:
    """Hand `python ARGS` to the server, pass it the signals meant for it, and end as it ended; or return (cold)."""
    umask = os.umask(0)
    os.umask(umask)
    # What this process was started ignoring, its fork ignores (`nohup`, `trap '' HUP`); Python itself ignores these two.
    ignored = [int(n) for n in signal.valid_signals() - {signal.SIGPIPE, signal.SIGXFSZ, signal.SIGKILL, signal.SIGSTOP}
               if signal.getsignal(n) == signal.SIG_IGN]
    request = json.dumps({"args": args, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask, "ignored": ignored})
    request = request.encode()
    socket.send_fds(connection, [len(request).to_bytes(_HEADER, "big") + request], [0, 1, 2])
    replies = connection.makefile("r")
    first = replies.readline().split()
    if first[:1] != ["pid"]:
        return  # the server declined (another environment): start cold
    try:
        fork = os.pidfd_open(int(first[1]))  # a pidfd, not the pid: the number may be reused once it ends
    except ProcessLookupError:  # it ended already: nothing to pass on
        pass
    else:
        for number in {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT} - set(ignored):
            signal.signal(number, lambda number, _: _pass_on(fork, number))  # what is sent to this process is meant for it
    # Killed, this process hangs up, and the server kills the fork.
    last = replies.readline().split()
    code = os.waitstatus_to_exitcode(int(last[1])) if last[:1] == ["exit"] else -signal.SIGKILL  # the server died
    if code < 0:  # killed by a signal: so is this process, as the shell and DVC would see it
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # these two cannot be handled, nor set to their default
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


def _pass_on(fork: int, number: int) -> None:
    try:
        signal.pidfd_send_signal(fork, number)
    except ProcessLookupError:
        pass


# The server: one per test run.

class _Fork(NamedTuple):
    pid: int
    pidfd: int  # readable once it ends
    connection: socket.socket  # readable once the client hangs up: it was killed


def serve(path: str) -> None:
    """Answer clients on the socket `path` until standard input closes (the pytest process ended)."""
    client = str(Path(path).parent / "python")  # beside the socket (WarmPython): a fork's sys.executable
    before = dict(os.environ)
    for name in PRELOAD:
        __import__(name)
    # What importing them set (torch._dynamo sets TORCHINDUCTOR_CACHE_DIR): a cold process importing them sets it too,
    # and a pytest process that imported them has it already.
    imported = {k: v for k, v in os.environ.items() if before.get(k) != v}
    startup = _startup(os.environ)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".binding")
    listener.listen(64)
    os.rename(path + ".binding", path)  # clients connect only once it listens
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    forks: dict[int, _Fork] = {}  # by pid
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is sys.stdin:  # the pytest process ended: stopped, or killed before it could stop this
                    shutil.rmtree(Path(path).parent, ignore_errors=True)
                    return
                if key.fileobj is listener:
                    fork = _answer(listener.accept()[0], startup, imported, forks, selector, client)
                    if fork is not None:
                        forks[fork.pid] = fork
                        selector.register(fork.pidfd, selectors.EVENT_READ, ("ended", fork))
                        selector.register(fork.connection, selectors.EVENT_READ, ("hung up", fork))
                elif key.data[1].pid not in forks:
                    continue  # it ended and hung up in the same select(): _end has dealt with both
                elif key.data[0] == "hung up":
                    selector.unregister(key.fileobj)
                    try:
                        signal.pidfd_send_signal(key.data[1].pidfd, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                else:
                    fork = forks.pop(key.data[1].pid)
                    _end(fork, selector)
    finally:  # the pytest process ended, or this one failed: no fork outlives it
        for fork in forks.values():
            signal.pidfd_send_signal(fork.pidfd, signal.SIGKILL)
            _end(fork, selector)


def _answer(connection: socket.socket, startup: dict[str, str], imported: dict[str, str], forks: dict[int, _Fork],
            selector: selectors.BaseSelector, client: str) -> "_Fork | None":
    """Fork for a client's request, or tell it to start cold; a request that never came whole is logged and dropped."""
    try:
        connection.settimeout(10)
        request, fds = _receive(connection)
        connection.settimeout(None)
    except (OSError, EOFError, ValueError) as error:
        print("no request:", repr(error), flush=True)
        connection.close()
        return None
    differs = sorted({name for name, _ in _startup(imported | request["env"]).items() ^ startup.items()})
    if differs:
        print("cold:", *request["args"], f"({', '.join(differs)} differs)", flush=True)
        _send(connection, "cold\n")
        connection.close()
        for fd in fds:
            os.close(fd)
        return None
    server = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            _die_with(server)
            selector.close()
            for fork in forks.values():
                os.close(fork.pidfd)
                fork.connection.close()
            connection.close()
            _child(request, fds, imported, client)
        finally:
            os._exit(1)  # never the server's loop in a fork
    for fd in fds:
        os.close(fd)
    print("warm:", pid, *request["args"], flush=True)
    _send(connection, f"pid {pid}\n")
    return _Fork(pid, os.pidfd_open(pid), connection)


def _end(fork: _Fork, selector: selectors.BaseSelector) -> None:
    """Reap an ended fork and tell its client how it ended."""
    for fileobj in (fork.pidfd, fork.connection):
        if fileobj in selector.get_map():
            selector.unregister(fileobj)
    _, status = os.waitpid(fork.pid, 0)
    os.close(fork.pidfd)
    _send(fork.connection, f"exit {status}\n")
    fork.connection.close()


def _die_with(server: int) -> None:
    """Be killed when the server dies, as a crash of the server gives no time to kill its forks."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != server:  # it died before that took effect
        os._exit(1)


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
    try:
        while len(data) < _HEADER or len(data) < _HEADER + int.from_bytes(data[:_HEADER], "big"):
            more = connection.recv(1 << 16)
            if not more:
                raise EOFError(f"the client hung up after {len(data)} bytes")
            data += more
        return json.loads(data[_HEADER:]), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _send(connection: socket.socket, line: str) -> None:
    try:
        connection.sendall(line.encode())
    except OSError:  # the client was killed: nobody waits for the answer
        pass


def _new_main() -> types.ModuleType:
    """A fresh __main__, as the interpreter makes before it runs a script or a module."""
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    return main


def _run_script(path: str) -> None:
    """Run the script at `path` as `python path` does: a new __main__ whose __file__ is `path`, sys.argv untouched."""
    main = _new_main()
    main.__file__, main.__cached__ = path, None
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    with open(path, "rb") as source:
        code = compile(source.read(), path, "exec")
    exec(code, main.__dict__)


def _print_uncaught(error: BaseException) -> None:
    """What `python` does with an exception it did not catch: sys.excepthook, from the script's frame on."""
    frames = error.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename == os.path.abspath(__file__):
        frames = frames.tb_next
    try:
        sys.excepthook(type(error), error.with_traceback(frames), frames)
    except BaseException as hook_error:  # as the interpreter does when the hook itself fails
        print("Error in sys.excepthook:", file=sys.stderr)
        traceback.print_exception(hook_error)
        print("\nOriginal exception was:", file=sys.stderr)
        traceback.print_exception(type(error), error, frames)


def _open_streams(unbuffered: bool) -> None:
    """sys.stdin, stdout and stderr as a fresh interpreter opens them (Python/pylifecycle.c, create_stdio):
    unbuffered (PYTHONUNBUFFERED) writes go straight to the file; else stdout is line-buffered only on a terminal,
    stderr always. Encoding and errors are the server's: its locale and PYTHONIOENCODING are the client's."""
    for fd, name, like in ((0, "stdin", sys.__stdin__), (1, "stdout", sys.__stdout__), (2, "stderr", sys.__stderr__)):
        writes = fd > 0
        raw = io.open(fd, "wb" if writes else "rb", buffering=0 if unbuffered and writes else -1, closefd=False)
        (raw.raw if hasattr(raw, "raw") else raw).name = f"<{name}>"
        stream = io.TextIOWrapper(raw, like.encoding, like.errors, newline="\n", write_through=unbuffered,
                                  line_buffering=not unbuffered and (os.isatty(fd) or fd == 2))
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _child(request: dict, fds: list[int], imported: dict[str, str], client: str) -> None:
    """Become `python ARGS` as started in the client's folder, with its environment, streams, signals and umask."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    for number in request["ignored"]:
        signal.signal(number, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(imported | request["env"])
    args = request["args"]
    sys.executable = client  # a `python` this one starts forks too
    sys.orig_argv = [sys.executable, *args]
    unbuffered = args[:1] == ["-u"]
    args = args[unbuffered:]
    _open_streams(unbuffered=unbuffered or bool(os.environ.get("PYTHONUNBUFFERED")))
    code = 0
    try:
        if args[0] == "-m":
            sys.argv = ["-m", *args[2:]]  # the module's path replaces "-m" once it is found
            sys.path[0] = os.getcwd()
            _new_main()
            runpy._run_module_as_main(args[1], alter_argv=True)
        else:
            sys.argv = args
            sys.path[0] = os.path.dirname(os.path.realpath(args[0]))
            _run_script(os.path.abspath(args[0]))
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            code = (exit.code or 0) & 0xFF
        else:
            print(exit.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt as error:
        _print_uncaught(error)
        code = -signal.SIGINT
    except BaseException as error:
        _print_uncaught(error)
        code = 1
    # As the interpreter ends (Py_FinalizeEx): wait for the threads that are not daemons, run atexit, flush.
    if "threading" in sys.modules:
        sys.modules["threading"]._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


# The pytest side.

class WarmPython:
    """The server of this test run, and the folder holding the client as `python` (and the server's log). The pytest
    process that starts it owns it; those it starts (xdist's workers) find it by FOLDER_VARIABLE and share it."""

    def __init__(self, folder: Path | None = None) -> None:
        self.process = None
        self.folder = folder or Path(tempfile.mkdtemp(prefix="warm-python-"))
        self.socket = str(self.folder / "socket")
        if folder is not None:
            return
        (self.folder / "python").write_text(f"#!{sys.executable} -IS\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                                            "import warm_python\nwarm_python.client()\n")
        (self.folder / "python").chmod(0o755)
        with open(self.folder / "server.log", "w") as log:
            self.process = subprocess.Popen([sys.executable, __file__, "serve", self.socket], stdin=subprocess.PIPE,
                                            stdout=log, stderr=log, cwd=self.folder)

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """`env` with this client first on PATH."""
        return env | {"PATH": f"{self.folder}{os.pathsep}{env['PATH']}", SOCKET_VARIABLE: self.socket}

    def log_text(self) -> str:
        return (self.folder / "server.log").read_text()

    def wait(self, timeout: float = 60) -> None:
        """Until it answers (it imports for some seconds first)."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            if (self.process and self.process.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"the warm python did not start: {self.log_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:  # its owner stops it
            return
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


_STARTED: list[WarmPython] = []
_FAILED: list[str] = []  # why the server never answered, once it did not


def start() -> None:
    """Start the test run's server, or share the one the pytest process that started this one runs (xdist's workers
    share their controller's; so does the GPU check's dry run, whose pytest a test starts); unless IMGPIPE_TESTS_COLD
    is set."""
    if _STARTED or os.environ.get("IMGPIPE_TESTS_COLD") or not hasattr(os, "pidfd_open"):
        return  # pidfd_open: Linux's; elsewhere stages start cold
    shared = os.environ.get(FOLDER_VARIABLE)
    _STARTED.append(WarmPython(Path(shared) if shared else None))
    os.environ[FOLDER_VARIABLE] = str(_STARTED[0].folder)  # what this process starts inherits it


def warm_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a command that starts stages: the client first on PATH, where the server is started; once it answers
    (a command started while it imports would start cold, and import as much beside it)."""
    if not _STARTED or _FAILED:
        return env
    try:
        _STARTED[0].wait()
    except RuntimeError as error:  # stages start cold, as they would without it: slower, not wrong
        _FAILED.append(str(error))
        print(f"warm python: {error}; stages start cold", file=sys.stderr)
        return env
    return _STARTED[0].env(env)


def started() -> WarmPython | None:
    return _STARTED[0] if _STARTED else None


def stop() -> None:
    for server in _STARTED:
        server.stop()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2])
    sys.stdout.flush()
    os._exit(0)  # not the interpreter's own end: tearing down torch, MLflow and matplotlib took 2 s, at the end of every test run
