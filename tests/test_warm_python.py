"""The warm start of stages in tests (tests/warm_python.py) gives the process a cold start gives: the same output,
exit status, folder, arguments and environment, and none of the server's own imports of imgpipe."""

import os
import signal
import subprocess
import sys

import pytest
import warm_python

SCRIPT = """
import os, sys
print(sys.argv, os.getcwd(), os.environ.get("STAGE_SETTING"), sys.path[0], __name__, __file__)
print("imgpipe" in sys.modules, sys.stdin.read())
print("to stderr", file=sys.stderr)
print("warm" if "torch" in sys.modules else "cold", file=sys.stderr)
{ending}
"""


@pytest.fixture
def server():
    started = warm_python.started()
    if started is None:
        pytest.skip("IMGPIPE_TESTS_COLD is set: stages start cold")
    started.wait()
    return started


def _run(folder, ending: str, warm: bool, cwd) -> subprocess.CompletedProcess:
    script = folder / "stages" / "stage.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(SCRIPT.format(ending=ending))
    env = os.environ | {"STAGE_SETTING": "lr=0.1", "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    env = warm_python.warm_env(env) if warm else env
    # As DVC runs a stage: a shell finds `python` on PATH.
    return subprocess.run("python stages/stage.py cnn 0", shell=True, cwd=cwd, env=env, input="from stdin",
                          capture_output=True, text=True)


@pytest.mark.parametrize("ending, status", [("sys.stdout.flush(); os._exit(3)", 3), ("raise SystemExit('bad setting')", 1),
                                            ("raise ValueError('boom')", 1), ("", 0),
                                            ("sys.stdout.flush(); os.kill(os.getpid(), signal.SIGTERM)", 128 + signal.SIGTERM)])
def test_a_warm_stage_is_the_process_a_cold_start_gives(server, tmp_path, ending, status):
    ending = "import signal\n" + ending  # a signal: the shell DVC runs a stage in reports 128 + its number
    cold = _run(tmp_path, ending, warm=False, cwd=tmp_path)
    warm = _run(tmp_path, ending, warm=True, cwd=tmp_path)
    assert cold.returncode == warm.returncode == status, (cold, warm)
    assert warm.stdout == cold.stdout and "['stages/stage.py', 'cnn', '0']" in warm.stdout and "from stdin" in warm.stdout
    assert warm.stdout.splitlines()[1].startswith("False")  # the server never imports imgpipe: each copy imports its own
    warm_errors, cold_errors = warm.stderr.splitlines(), cold.stderr.splitlines()
    assert warm_errors[1] == "warm" and cold_errors[1] == "cold"
    assert warm_errors[:1] + warm_errors[2:] == cold_errors[:1] + cold_errors[2:]  # tracebacks alike


def test_another_startup_environment_starts_cold(server, tmp_path):
    os.environ["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1") + "0"
    try:
        done = _run(tmp_path, "", warm=True, cwd=tmp_path)
    finally:
        os.environ["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"][:-1]
    assert done.returncode == 0 and done.stderr.splitlines()[1] == "cold"
