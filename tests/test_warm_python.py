"""The warm start of stages in tests (tests/warm_python.py) gives the process a cold start gives: the same output,
exit status, folder, arguments, environment, signals and umask, and none of the server's own imports of imgpipe;
and a client killed, or a client that hangs up, leaves no fork behind and the server serving."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import warm_python

SCRIPT = """
import os, signal, sys
print(sys.argv, os.getcwd(), os.environ.get("STAGE_SETTING"), sys.path[0], __name__, __file__, sys.stdout.name)
print("imgpipe" in sys.modules, sys.stdin.read(), oct(os.umask(0o22)), signal.getsignal(signal.SIGHUP))
print("to stderr", file=sys.stderr)
print("warm" if "torch" in sys.modules else "cold", file=sys.stderr)
{ending}
"""
ENDINGS = [
    ("sys.stdout.flush(); os._exit(3)", 3),
    ("raise SystemExit('bad setting')", 1),
    ("raise ValueError('boom')", 1),
    ("", 0),
    # A signal: the shell DVC runs a stage in reports 128 + its number.
    ("sys.stdout.flush(); os.kill(os.getpid(), signal.SIGTERM)", 128 + signal.SIGTERM),
    ("sys.stdout.flush(); os.kill(os.getpid(), signal.SIGKILL)", 128 + signal.SIGKILL),
    # What the interpreter does as it ends: wait for threads, then atexit, then flush.
    ("import threading, time\nthreading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()", 0),
    ("import atexit\natexit.register(print, 'at exit')", 0),
    ("sys.excepthook = lambda kind, error, frames: print('hooked', kind.__name__, file=sys.stderr)\nraise ValueError", 1),
    # PYTHONUNBUFFERED: written at once, or lost with the buffer.
    ("print('last words'); os._exit(0)", 0),
]


@pytest.fixture
def server():
    started = warm_python.started()
    if started is None:
        pytest.skip("IMGPIPE_TESTS_COLD is set: stages start cold")
    started.wait()
    return started


def _run(folder, command: str, ending: str, warm: bool, **env) -> subprocess.CompletedProcess:
    script = folder / "stages" / "stage.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(SCRIPT.format(ending=ending))
    env = os.environ | {"STAGE_SETTING": "lr=0.1", "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"} | env
    env = {k: v for k, v in env.items() if v is not None}
    env = warm_python.warm_env(env) if warm else env
    # As DVC runs a stage: a shell finds `python` on PATH.
    return subprocess.run(command, shell=True, cwd=folder, env=env, input="from stdin", capture_output=True, text=True)


def _alike(cold: subprocess.CompletedProcess, warm: subprocess.CompletedProcess) -> None:
    assert warm.stdout == cold.stdout
    warm_errors, cold_errors = warm.stderr.splitlines(), cold.stderr.splitlines()
    assert warm_errors[1] == "warm" and cold_errors[1] == "cold"
    assert warm_errors[:1] + warm_errors[2:] == cold_errors[:1] + cold_errors[2:]  # tracebacks alike


@pytest.mark.parametrize("unbuffered", ["1", None])
@pytest.mark.parametrize("ending, status", ENDINGS)
def test_a_warm_stage_is_the_process_a_cold_start_gives(server, tmp_path, ending, status, unbuffered):
    command = "python stages/stage.py cnn 0"
    cold = _run(tmp_path, command, ending, warm=False, PYTHONUNBUFFERED=unbuffered)
    warm = _run(tmp_path, command, ending, warm=True, PYTHONUNBUFFERED=unbuffered)
    assert cold.returncode == warm.returncode == status, (cold, warm)
    _alike(cold, warm)
    if "_exit" not in ending or unbuffered:
        assert "['stages/stage.py', 'cnn', '0']" in warm.stdout and "from stdin" in warm.stdout
        assert warm.stdout.splitlines()[1].startswith("False")  # the server never imports imgpipe: each copy its own
    assert ("thread done" in warm.stdout) == ("thread" in ending) and ("hooked ValueError" in warm.stderr) == ("hook" in ending)
    assert ("last words" in warm.stdout) == ("last words" in ending and bool(unbuffered))


@pytest.mark.parametrize("ending, status", [("", 0), ("raise ValueError('boom')", 1), ("raise SystemExit(4)", 4)])
def test_a_warm_module_is_the_module_a_cold_start_gives(server, tmp_path, ending, status):
    cold = _run(tmp_path, "python -m stages.stage cnn 0", ending, warm=False)
    warm = _run(tmp_path, "python -m stages.stage cnn 0", ending, warm=True)
    assert cold.returncode == warm.returncode == status, (cold, warm)
    _alike(cold, warm)
    assert f"['{tmp_path / 'stages' / 'stage.py'}', 'cnn', '0'] {tmp_path} " in warm.stdout


def test_a_python_a_warm_stage_starts_as_torchrun_starts_its_ranks_starts_warm_too(server, tmp_path):
    """sys.executable in a fork is the client: `python -u` (unbuffered, as a cold start) with torchrun's variables forks."""
    (tmp_path / "rank.py").write_text("import os, sys\nprint(sys.argv, 'warm' if 'torch' in sys.modules else 'cold')\n"
                                      "print('last words'); os._exit(0)\n")  # written at once, or lost with the buffer
    ending = ("import subprocess\nsubprocess.run([sys.executable, '-u', 'rank.py', 'cnn'], stdin=subprocess.DEVNULL, "
              "env=os.environ | {'TORCHELASTIC_RUN_ID': 'none', 'TORCH_NCCL_ASYNC_ERROR_HANDLING': '3'}, check=True)")
    cold, warm = (_run(tmp_path, "python stages/stage.py", ending, warm=warm, PYTHONUNBUFFERED=None) for warm in (False, True))
    assert cold.returncode == warm.returncode == 0, (cold, warm)
    _alike(cold, warm.__class__(warm.args, 0, warm.stdout.replace("'rank.py', 'cnn'] warm", "'rank.py', 'cnn'] cold"), warm.stderr))
    # (The stage's own lines, buffered, come after.)
    assert warm.stdout.startswith("['rank.py', 'cnn'] warm\nlast words\n") and cold.stdout.startswith("['rank.py', 'cnn'] cold\nlast words\n")


def test_a_warm_stage_keeps_the_umask_and_the_ignored_signals_it_was_started_with(server, tmp_path):
    command = "umask 077; trap '' HUP; python stages/stage.py"
    cold, warm = (_run(tmp_path, command, "", warm=warm) for warm in (False, True))
    _alike(cold, warm)
    assert "0o77 1\n" in warm.stdout  # SIG_IGN is 1


def test_another_startup_environment_starts_cold(server, tmp_path):
    done = _run(tmp_path, "python stages/stage.py", "", warm=True, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1") + "0")
    assert done.returncode == 0 and done.stderr.splitlines()[1] == "cold"


def _gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_killed_client_takes_its_fork_with_it(server, tmp_path):
    (tmp_path / "stage.py").write_text("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n")
    client = subprocess.Popen([str(server.folder / "python"), "stage.py"], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                              env=server.env(dict(os.environ)))
    fork = int(client.stdout.readline())
    assert fork != client.pid  # it ran warm
    client.kill()
    client.wait()
    assert _gone(fork), "the fork outlived its client"


def test_a_client_that_hangs_up_leaves_the_server_serving(server, tmp_path):
    for request in (b"", b"\0\0\0\0\0\0\1\0{\"args\""):  # nothing; half a request
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(server.socket)
            connection.sendall(request)
    done = _run(tmp_path, "python stages/stage.py", "", warm=True)
    assert done.returncode == 0 and done.stderr.splitlines()[1] == "warm", server.log_text()
