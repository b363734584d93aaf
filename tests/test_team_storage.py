"""The team's storage, for real: DVC's S3 remote on a SeaweedFS server on 127.0.0.1 (tests/s3.py), as README's team
section sets it up. One machine pushes the shared pipeline's outputs; a fresh clone of its commit pulls them back
byte for byte and has nothing to rerun; an experiment travels the same way; a storage crash in the middle of a
push fails it, and a rerun after the restart completes it. Runs travel too: the tests' tracking server keeps its
artifacts on the same S3 server (conftest; test_tracking_server loads and serves models from it); a tracking
server whose artifact store is down fails the publish stage in one line."""

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from project import fork, run
from s3 import (
    ACCESS_KEY,
    NO_WEED,
    SECRET_KEY,
    S3Server,
    dvc_credential_commands,
    dvc_remote_commands,
    in_one_process,
    split_outputs,
    weed,
)
from servers import TrackingServer, free_port

pytestmark = pytest.mark.slow  # the shared pipeline run

OUTPUTS = ("data", "models")  # what DVC alone carries (git-ignored)


def outputs(project: Path) -> dict[str, bytes]:
    """Every file DVC tracks under data/ and models/, by path relative to the project."""
    found = {}
    for folder in OUTPUTS:
        for path in sorted((project / folder).rglob("*")):
            relative = path.relative_to(project)
            if path.is_file() and ".resume" not in relative.parts:  # models/.resume: training's own state, DVC-ignored
                found[str(relative)] = path.read_bytes()
    return found


def differences(got: dict[str, bytes], expected: dict[str, bytes]) -> list[str]:
    return sorted(path for path in got.keys() | expected.keys() if got.get(path) != expected.get(path))


def commit(project: Path, message: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", message], project)


def dvc(project: Path, *commands: list[str]) -> list[str]:
    """What each of these `dvc` commands printed, run one after another in one process (each `dvc` process costs
    half a second of CPU before its work); fails at the first that fails."""
    return split_outputs(run(in_one_process(list(commands)), project).stdout)


def clone(origin: Path, target: Path, *commands: list[str]) -> list[str]:
    """Another machine: a git clone (code, dvc.lock, .dvc/config; no data, no models, no credentials) given its own,
    then the `dvc` commands given there; returns what each of those printed."""
    run(["git", "clone", "-q", str(origin), str(target)], target.parent)
    assert not any((target / folder).exists() for folder in OUTPUTS)
    assert not (target / ".dvc/config.local").exists() and SECRET_KEY not in (target / ".dvc/config").read_text()
    return dvc(target, *dvc_credential_commands(), *commands)[len(dvc_credential_commands()):]


STATUS = ["dvc", "status"]
UP_TO_DATE = "Data and pipelines are up to date."


@pytest.fixture(scope="module")
def team(pipeline, s3_server, tmp_path_factory):
    """The first machine: a fork of the shared pipeline with the S3 remote, its results committed and pushed to
    a bare repository (the team's git server), its data and models pushed to the bucket."""
    folder = tmp_path_factory.mktemp("team")
    first = fork(pipeline, folder / "first")
    *_, pushed = dvc(first, *dvc_remote_commands(s3_server, f"{folder.name}/dvc"), ["dvc", "push"])
    assert "pushed" in pushed, pushed
    commit(first, "trained")
    origin = folder / "origin.git"
    run(["git", "clone", "-q", "--bare", str(first), str(origin)], folder)
    run(["git", "remote", "add", "origin", str(origin)], first)
    return SimpleNamespace(first=first, origin=origin, prefix=f"{folder.name}/dvc")


def test_a_fresh_clone_pulls_data_and_models_byte_for_byte_and_retrains_nothing(team, pipeline, s3_server, tmp_path):
    assert s3_server.keys(team.prefix)  # the objects are on the server, not in a folder beside the project
    second = tmp_path / "second"
    _, status, cloud = clone(team.origin, second, ["dvc", "pull"], STATUS, ["dvc", "status", "--cloud"])
    assert outputs(second).keys() == outputs(pipeline).keys() != set()
    assert differences(outputs(second), outputs(pipeline)) == []
    assert status == UP_TO_DATE
    assert "Cache and remote 'storage' are in sync." in cloud


def test_an_experiment_travels_by_exp_push_and_exp_pull(team, pipeline, tmp_path):
    # An experiment that changes one model and keeps the rest: only the centroid retrains (one pass), and only
    # its training runs (evaluate and report, some 11 s, would add nothing that DVC's remote carries). exp push sends
    # its git ref to origin, its outputs to S3.
    _, left, _ = dvc(team.first, ["dvc", "exp", "run", "-n", "l1-centroid", "-S", "models.centroid.distance=l1", "train@centroid-0"],
                     STATUS, ["dvc", "exp", "push", "origin", "l1-centroid"])
    trained = outputs(team.first)
    assert "train@" not in left and "evaluate:" in left
    assert differences(trained, outputs(pipeline)) == ["models/centroid/seed0.pt"]

    second = tmp_path / "second"
    _, listed, _, status = clone(team.origin, second, ["dvc", "exp", "pull", "origin", "l1-centroid"],
                                 ["dvc", "exp", "list", "--name-only"], ["dvc", "exp", "apply", "l1-centroid"], STATUS)
    assert "l1-centroid" in listed
    assert differences(outputs(second), trained) == []
    assert status == left  # what the experiment left to run, and no training


# A file DVC's S3 client (s3fs) uploads in parts, as it does files from 100 MiB: a multipart upload begun, 50 MiB parts
# one after another (some 2 s here), then joined. While the server lists the upload as begun the push cannot have
# finished, so a kill then lands in the middle of it however loaded the machine. (Watching for stored objects alone
# needed a far bigger file: 64 MB sent in one request once finished before the kill landed, and the push succeeded.)
BIG_MB = 101


def test_storage_stopped_in_the_middle_of_a_push_fails_it_and_a_rerun_completes_it(pipeline, tmp_path):
    """The server is SIGKILLed once the push has stored its first objects, while the big file is still on its way."""
    if weed() is None:
        pytest.skip(NO_WEED)
    server = S3Server(tmp_path / "s3")  # a server of its own: this test crashes it; it starts while the project is made
    try:
        first = fork(pipeline, tmp_path / "first")
        (first / "extra").mkdir()
        (first / "extra/big.bin").write_bytes(os.urandom(BIG_MB << 20))
        dvc(first, *dvc_remote_commands(server, "dvc"), ["dvc", "add", "extra/big.bin"])
        commit(first, "trained, with a big file")
        expected = outputs(first) | {"extra/big.bin": (first / "extra/big.bin").read_bytes()}

        server.wait()
        # botocore's own retries (5 attempts, backing off) would take some 20 s to give up: one attempt, for speed.
        env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "AWS_MAX_ATTEMPTS": "1"}
        push = subprocess.Popen(["dvc", "push"], cwd=first, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        while push.poll() is None and not (server.keys("dvc") and server.uploads("dvc")):
            time.sleep(0.05)  # the upload in parts takes seconds: no need to ask the server 100 times a second
        assert push.poll() is None, f"the push ended before the big file's upload in parts was seen:\n{push.stdout.read()}"
        server.kill()
        started = time.monotonic()
        output, _ = push.communicate(timeout=300)
        failed_after = time.monotonic() - started
        errors = [line for line in output.splitlines() if line.startswith("ERROR")]
        assert push.returncode != 0, output
        # DVC's own message: a line per object in flight naming the endpoint it lost, then its summary; no traceback.
        lost = [line for line in errors if f'Could not connect to the endpoint URL: "{server.url}/' in line]
        assert lost and all(line in lost or line.startswith(("ERROR: failed to push data", "ERROR: unexpected error"))
                            for line in errors), output
        assert "Traceback" not in output
        print(f"\ndvc push failed {failed_after:.1f} s after the server was killed, {len(errors)} lines:\n" + "\n".join(errors))

        server.start()
        server.wait()
        rerun = run(["dvc", "push"], first)
        assert "pushed" in rerun.stdout, rerun.stdout
        print(f"after the restart: {rerun.stdout.strip()}")

        third = tmp_path / "third"
        _, status = clone(first, third, ["dvc", "pull"], STATUS)
        got = outputs(third) | {"extra/big.bin": (third / "extra/big.bin").read_bytes()}
        assert differences(got, expected) == []
        assert status == UP_TO_DATE
    finally:
        server.stop()


def test_an_artifact_store_that_is_down_fails_the_publish_stage_in_one_line(pipeline, tmp_path):
    """A tracking server that answers while its S3 does not: runs can be made, their files cannot be stored."""
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    (tmp_path / "server").mkdir()
    server = TrackingServer(tmp_path / "server", artifacts="s3://team/mlflow", postgres=False,
                            env={"MLFLOW_S3_ENDPOINT_URL": dead, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"})
    try:
        server.wait()
        project = fork(pipeline, tmp_path / "project")
        done = run(["python", "stages/publish.py"], project, check=False, MLFLOW_TRACKING_URI=server.url,
                   MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    finally:
        server.stop()
    assert done.returncode == 1
    assert done.stderr.strip().startswith(f"error: MLflow tracking at {server.url} failed ("), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    print(f"\n{done.stderr.strip()}")
