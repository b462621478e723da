"""``ray job submit ... -- python -m launch.erase_job`` against a token-authenticated Ray head,
exactly as the README's "On a cluster" section says.

Ray's token authentication (2.52 and later; read from the installed 2.60):

- the token is looked up in ``RAY_AUTH_TOKEN`` (the value), then ``RAY_AUTH_TOKEN_PATH`` (a
  file), then ``~/.ray/auth_token``; ``ray get-auth-token --generate`` writes the last one if
  no token exists yet and prints the token. ``ray start`` never writes one (only a
  ``ray.init()`` that starts its own local cluster does).
- ``RAY_AUTH_MODE=token`` switches it on. ``ray start --head`` without it switches it on only
  if it finds a token (and starts an open cluster otherwise); with it and no token it refuses
  to start. The head's processes, and so a job's driver, inherit the mode and the head's
  ``~/.ray/auth_token``.
- ``ray job submit`` sends the token only when ``RAY_AUTH_MODE=token`` is set where it runs;
  without it the dashboard answers 401 "Missing authentication token", even when
  ``RAY_AUTH_TOKEN`` is set or ``~/.ray/auth_token`` exists.

The test starts a private head (its own HOME, --temp-dir and ports, on 127.0.0.1; torn down
by killing exactly the processes it started, never ``ray stop``), submits the README's command
without the token (refused) and with ``RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<the head's token>``
from a client that has no token file, and checks the published adapter. The erase is a
one-process one (no ``--workers``) on ``tiny-llama``, so the job is cheap.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")
pytest.importorskip("ray._private.authentication", reason="Ray without token authentication")

from eraser_dist import api  # noqa: E402
from eraser_dist.arguments import TrainArguments  # noqa: E402
from eraser_dist.data import Example, write_examples  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: `ray`, and the `python` the job runs
RAY = str(BIN / "ray") if (BIN / "ray").exists() else shutil.which("ray")
# what a shell of this process may carry from elsewhere (a ray.init() in this process sets
# RAY_AUTH_MODE=token in os.environ); every Ray command here gets exactly what it is given
RAY_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
            "RAY_API_SERVER_ADDRESS", "RAY_RUNTIME_ENV_IGNORE_GITIGNORE")
PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port",
              "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "runtime-env-agent-port", "metrics-export-port")
READY_S = 120
JOB_S = 240


def ray_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RAY_VARS}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


@dataclass
class Head:
    proc: subprocess.Popen
    root: Path
    dashboard: str
    token: str
    log: Path

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def wait_ready(self) -> None:
        """Until `ray start` has started everything and the dashboard answers the token."""
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"ray start exited with {self.proc.returncode}:\n{self.log_tail()}")
            if "Ray runtime started" in self.log_tail(10**6):
                try:
                    if get(f"{self.dashboard}/api/version", self.token)[0] == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.5)
        pytest.fail(f"the Ray head was not ready after {READY_S} s:\n{self.log_tail()}")


def stop_head(proc: subprocess.Popen) -> None:
    """End `ray start --block` and every process under it, and nothing else: SIGTERM makes it
    stop its own processes; what is left of the tree taken before is then killed."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _, alive = psutil.wait_procs(tree, timeout=10)
    for p in alive:
        try:
            p.kill()  # psutil refuses a pid that was reused by another process
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture
def head():
    """A private token-authenticated Ray head, started as the README says (its readiness is
    awaited by the test, so that it can train meanwhile); always torn down."""
    if RAY is None:
        pytest.skip("no `ray` command")
    # short: Ray's unix sockets live under --temp-dir (107-character limit)
    root = Path(tempfile.mkdtemp(prefix="rayjob-", dir="/tmp"))
    proc = None
    try:
        home = root / "head-home"  # the head node's home: its ~/.ray/auth_token
        home.mkdir()
        env = ray_env(home)
        gen = subprocess.run([RAY, "get-auth-token", "--generate"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert gen.returncode == 0, gen.stderr
        token = gen.stdout.strip()
        assert token and (home / ".ray" / "auth_token").read_text().strip() == token
        ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        log = root / "head.log"
        cmd = [RAY, "start", "--head", "--block", f"--temp-dir={root / 'ray'}",
               "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               "--include-dashboard=true", "--num-cpus=1", "--disable-usage-stats",
               *(f"--{flag}={port}" for flag, port in ports.items())]
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, env={**env, "RAY_AUTH_MODE": "token"}, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        yield Head(proc, root, f"http://127.0.0.1:{ports['dashboard-port']}", token, log)
    finally:
        if proc is not None:
            stop_head(proc)
        shutil.rmtree(root, ignore_errors=True)


def submit(head: Head, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """The README's command, from the repository root."""
    cmd = [RAY, "job", "submit", "--address", head.dashboard, "--working-dir", ".", "--",
           "python", "-m", "launch.erase_job", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=JOB_S)


def test_erase_job_submitted_with_the_token(head):
    t0 = time.monotonic()
    work = head.root / "work"  # on "shared storage": the job runs on this machine
    work.mkdir()
    data, adapter, out = work / "train.parquet", work / "adapter", work / "erased"
    write_examples(data, [Example(f"r{i}", f"What is {i} plus {i}?", str(2 * i))
                          for i in range(8)])
    api.train("tiny-llama", data, adapter,
              training=TrainArguments(epochs=1, lr=1e-2, batch_size=4, weight_decay=0.1,
                                      max_length=32), progress=False)
    request = work / "request.json"
    request.write_text(json.dumps({"kind": "remove", "ids": ["r1", "r5"]}))
    args = ("--base", "tiny-llama", "--adapter", str(adapter), "--data", str(data),
            "--request", str(request), "--out", str(out), "--hvp", "ggn", "--max-iter", "3",
            "--quiet")
    head.wait_ready()

    client = head.root / "client-home"  # the submitting machine: no token file of its own
    client.mkdir()
    # the review's failure: the README command as it was, without the token
    refused = submit(head, ray_env(client), *args)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0, said[-3000:]
    assert "Missing authentication token" in said, said[-3000:]
    # the token alone is not enough either: `ray job submit` sends it only in token mode
    refused = submit(head, ray_env(client, RAY_AUTH_TOKEN=head.token), *args)
    assert "Missing authentication token" in refused.stdout + refused.stderr
    status, body = get(f"{head.dashboard}/api/jobs/", head.token)
    assert status == 200 and json.loads(body) == [], body
    assert not out.exists()

    done = submit(head, ray_env(client, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=head.token),
                  *args)
    said = done.stdout + done.stderr
    assert done.returncode == 0, f"{said[-4000:]}\n--- head:\n{head.log_tail()}"
    job = re.search(r"Job '(raysubmit_\w+)' succeeded", said)
    assert job, said[-4000:]
    status, body = get(f"{head.dashboard}/api/jobs/{job.group(1)}", head.token)
    assert status == 200 and json.loads(body)["status"] == "SUCCEEDED", body

    assert {"adapter_config.json", "adapter_model.safetensors", "eraser_adapter.json",
            "adapter_delta.safetensors", "erase_report.json"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "erase_report.json").read_text())
    assert (report["kind"], report["n_train"], report["n_affected"]) == ("remove", 8, 2)

    # the uploaded working dir: the code, without what .gitignore lists (.venv, *.egg-info)
    files = head.root / "ray" / "session_latest" / "runtime_resources" / "working_dir_files"
    [pkg] = [p for p in files.glob("_ray_pkg_*") if p.is_dir()]
    assert (pkg / "launch" / "erase_job.py").is_file()
    assert not (pkg / ".venv").exists() and not list(pkg.glob("*.egg-info"))
    print(f"test body {time.monotonic() - t0:.1f} s")
