"""Real servers for the tests, started in the background: the team setup README describes, a `mlflow server`
on PostgreSQL (a throwaway cluster: initdb, pg_ctl, createdb) where PostgreSQL is installed, else on SQLite;
and `mlflow models serve`."""

import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# MLflow 3's server otherwise starts about seven huey worker processes (for GenAI jobs), each importing
# MLflow: some 20 CPU-seconds that runs, artifacts and the registry do not need.
NO_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    """A port free now, from below the kernel's ephemeral range: a port the kernel hands out (bind to 0) is one it
    may hand out again to any outgoing connection before the server binds it (weed's gRPC port was taken so)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    # Its own generator, not the global one a test may seed: two test processes would draw the same ports.
    candidates = random.SystemRandom().sample(range(10000, low), min(200, low - 10000)) if low > 12000 else []
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path | None:
    """Where PostgreSQL's programs are (Debian keeps them in /usr/lib/postgresql/<version>/bin), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


class TrackingServer:
    """`mlflow server` on 127.0.0.1 with proxied artifacts, in `folder` or at `artifacts` (an s3:// address, the
    server alone given the bucket's credentials in `env`); its store a PostgreSQL database in a cluster of its
    own where PostgreSQL is installed (and `postgres`), else SQLite. Starts at once, in the background."""

    def __init__(self, folder: Path, artifacts: str | None = None, env: dict[str, str] | None = None, postgres: bool = True):
        self.folder = folder
        self.url = f"http://127.0.0.1:{free_port()}"
        self.artifacts = artifacts or str(folder / "artifacts")
        self.bin = postgres_bin() if postgres else None
        # PostgreSQL refuses to run as root: where the tests are root, its programs run as `postgres`.
        self.as_owner = ["runuser", "-u", "postgres", "--"] if self.bin and os.geteuid() == 0 else []
        self.cluster = folder / "postgres"
        commands = []
        if self.bin:
            port = free_port()
            self.store = f"postgresql://postgres@127.0.0.1:{port}/mlflow"
            self.cluster.mkdir()
            if self.as_owner:
                shutil.chown(self.cluster, "postgres")
                folder.chmod(0o711)  # mkdtemp's 0700 would keep `postgres` out of its cluster
            options = f"-p {port} -k {self.cluster} -c listen_addresses=127.0.0.1"
            commands += [
                # --no-sync: a throwaway cluster need not wait for its files to reach the disk (0.9 s of 2.2 here).
                self._pg("initdb", "-D", self.cluster, "-A", "trust", "-U", "postgres", "--no-locale", "-E", "UTF8",
                         "--no-sync") + " >/dev/null",
                self._pg("pg_ctl", "-D", self.cluster, "-o", options, "-l", self.cluster / "log", "-w", "start") + " >/dev/null",
                self._pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"),
            ]
        else:
            self.store = f"sqlite:///{folder / 'mlflow.db'}"
        commands.append("exec " + shlex.join(self._server_command()))  # the process to stop is the server's
        self.env = os.environ | NO_JOB_RUNNER | (env or {})
        self.served = False  # until wait() first succeeds
        self.log = folder / "server.log"
        with open(self.log, "wb") as log:
            # A session of its own: stop() ends the whole group (the server starts uvicorn; pg_ctl detaches PostgreSQL).
            self.process = subprocess.Popen(["bash", "-ec", " && ".join(commands)], stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True)

    def kill_server(self) -> None:
        """A crash of `mlflow server` alone (SIGKILL to it and its workers): its store, PostgreSQL, goes on."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def _server_command(self) -> list[str]:
        return [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1],
                "--workers", "1", "--backend-store-uri", self.store, "--artifacts-destination", self.artifacts]

    def _start_server(self) -> None:
        """`mlflow server` alone (PostgreSQL already up), on self.url."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self._server_command(), stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)

    def restart_server(self) -> str:
        """`mlflow server` started again, on the same address and store, once it answers."""
        self._start_server()
        return self.wait()

    def database(self, name: str) -> str:
        """The URL of a new database of its own in the server's PostgreSQL cluster (e.g. an Optuna storage)."""
        port = self.store.rsplit(":", 1)[1].split("/")[0]
        subprocess.run(self._pg("createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", name), shell=True, check=True)
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    @property
    def on_postgresql(self) -> bool:
        return self.store.startswith("postgresql")

    def _pg(self, program: str, *args) -> str:
        return shlex.join([*self.as_owner, str(self.bin / program), *map(str, args)])

    def wait(self) -> str:
        """The server's address, once it answers (a minute at most); fails naming what went wrong. Its port is chosen
        seconds before the server binds it (PostgreSQL starts first): taken meanwhile, the server starts on another."""
        for attempt in range(3):
            try:
                wait_for(f"{self.url}/health", self.process, self.log)
                self.served = True
                return self.url
            except RuntimeError as error:
                if self.served or attempt == 2 or "address already in use" not in str(error):
                    raise
                self.url = f"http://127.0.0.1:{free_port()}"
                self._start_server()

    def stop(self) -> None:
        """Gone, with its folder: SIGKILL, not a graceful stop (some 1.5 s of waiting, for a store thrown away next)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        if self.bin and (self.cluster / "postmaster.pid").exists():
            subprocess.run(self._pg("pg_ctl", "-D", self.cluster, "-m", "immediate", "stop"), shell=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.folder, ignore_errors=True)


def wait_for(url: str, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{url}: the server exited ({process.returncode}): {log.read_text()[-2000:]}")
            time.sleep(0.1)
    raise RuntimeError(f"{url}: no answer within {seconds:.0f} s: {log.read_text()[-2000:]}")


def serve_model(model_uri: str, folder: Path, tracking_uri: str) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve` of a model, in the environment the tests run in (--env-manager local), on 127.0.0.1.
    Returns the process and the address of its /invocations, once it answers."""
    port = free_port()
    log = folder / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
                                    "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                   stdout=out, stderr=subprocess.STDOUT,
                                   env=os.environ | {"MLFLOW_TRACKING_URI": tracking_uri,  # it runs `uvicorn` from PATH: ours
                                                     "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", process, log)
    except RuntimeError:
        process.terminate()
        raise
    return process, f"http://127.0.0.1:{port}/invocations"
