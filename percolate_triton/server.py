"""Start and stop a real Triton Inference Server from the ``nvidia-pytriton`` wheel.

The wheel carries ``tritonserver`` and the Python backend but not a ready backend
folder, so the launcher builds one for the running Python (backend library, utils and
the matching stub), puts the wheel's bundled libraries on ``LD_LIBRARY_PATH`` and this
virtual environment's ``bin/`` first on ``PATH`` (the stub imports numpy and
onnxruntime from there). It waits until every model is READY and otherwise stops with
the model's own error text. A lock file stops a second launcher on the same repository.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from percolate_models.errors import MissingPackageError, PercolateError, RepositoryError
from percolate_models.paths import ProjectPaths
from percolate_models.sources import SETUP_HINT, locate
from percolate_models.catalog import WeightsSource

PYTRITON = WeightsSource("nvidia-pytriton", "pytriton", "tritonserver")


class TritonStartError(PercolateError):
    """Triton did not come up, or a model did not become READY."""


class PortInUseError(PercolateError):
    """A port asked for is already taken."""


@dataclass(frozen=True)
class TritonConfig:
    """How to run Triton; ``from_env`` reads ``PERCOLATE_TRITON_*`` once."""

    model_repository: Path
    grpc_port: int = 0
    """0 picks a free port."""
    http_port: int = 0
    metrics_port: int = 0
    host: str = "127.0.0.1"
    model_config_name: str = ""
    """``gpu`` selects ``configs/gpu.pbtxt`` (official container); empty is the cpu config."""
    startup_timeout_s: float = 180.0
    stop_timeout_s: float = 30.0
    log_dir: Path | None = None
    extra_args: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "TritonConfig":
        env = os.environ if env is None else env
        paths = ProjectPaths.from_env(env)
        return cls(
            model_repository=paths.model_repository,
            grpc_port=int(env.get("PERCOLATE_TRITON_GRPC_PORT", "0")),
            http_port=int(env.get("PERCOLATE_TRITON_HTTP_PORT", "0")),
            metrics_port=int(env.get("PERCOLATE_TRITON_METRICS_PORT", "0")),
            model_config_name=env.get("PERCOLATE_TRITON_MODEL_CONFIG_NAME", ""),
            startup_timeout_s=float(env.get("PERCOLATE_TRITON_STARTUP_TIMEOUT_S", "180")),
            log_dir=paths.cache / "triton" / "logs",
        )


@dataclass
class TritonServer:
    """A running ``tritonserver`` process; use as a context manager.

    >>> with TritonServer(TritonConfig.from_env()) as triton:
    ...     client = tritonclient.grpc.InferenceServerClient(triton.grpc_url)
    """

    config: TritonConfig
    process: subprocess.Popen | None = field(default=None, init=False)
    log_path: Path | None = field(default=None, init=False)
    _lock: object = field(default=None, init=False, repr=False)
    shm_prefix: str = field(default="", init=False)
    """Name prefix of this Triton's Python-backend regions in /dev/shm: a Triton that is
    killed leaves them behind, so ``stop`` removes them (``remove_backend_regions``)."""

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.config.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.config.host}:{self.config.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.host}:{self.config.metrics_port}/metrics"

    def __enter__(self) -> "TritonServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        repo = self.config.model_repository
        if not repo.is_dir():
            raise RepositoryError(f"model repository {repo} does not exist",
                                  "run `percolate-models build`")
        binary, backends, libs = _triton_install()
        self.config = replace(self.config, **_choose_ports(self.config))
        self._lock = _lock_repository(repo, self.config)
        log_dir = self.config.log_dir or ProjectPaths.from_env().cache / "triton" / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"triton-{self.config.grpc_port}.log"
        self.shm_prefix = f"percolate_triton_{secrets.token_hex(6)}_"
        command = [
            str(binary), f"--model-repository={repo}", f"--backend-directory={backends}",
            f"--grpc-port={self.config.grpc_port}", f"--http-port={self.config.http_port}",
            f"--metrics-port={self.config.metrics_port}", f"--grpc-address={self.config.host}",
            f"--http-address={self.config.host}", "--exit-on-error=false",
            "--strict-readiness=true", "--log-verbose=0",
            f"--exit-timeout-secs={int(self.config.stop_timeout_s)}",
            *([f"--model-config-name={self.config.model_config_name}"]
              if self.config.model_config_name else []),
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self.config.extra_args,
        ]
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True,
                                            preexec_fn=_die_with_parent)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + self.config.startup_timeout_s
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise TritonStartError(
                        f"tritonserver exited with code {self.process.returncode} "
                        f"({self._log_tail()})", f"full log: {self.log_path}")
                try:
                    index = client.get_model_repository_index(as_json=True).get("models", [])
                except InferenceServerException:
                    time.sleep(0.2)
                    continue
                states = {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in index}
                failed = {n: r for n, (s, r) in states.items() if s == "UNAVAILABLE"}
                if failed:
                    name, reason = sorted(failed.items())[0]
                    raise TritonStartError(
                        f"model {name} failed to load: {reason.strip()}",
                        "run `percolate-models build` to rebuild the repository, "
                        f"full log: {self.log_path}")
                if states and all(s == "READY" for s, _ in states.values()):
                    if client.is_server_ready():
                        return
                time.sleep(0.2)
        finally:
            client.close()
        raise TritonStartError(
            f"Triton was not ready after {self.config.startup_timeout_s:.0f} s",
            f"see {self.log_path}")

    def _log_tail(self) -> str:
        if not self.log_path or not self.log_path.exists():
            return "no log"
        lines = [l for l in self.log_path.read_text(errors="replace").splitlines()
                 if l[:1] in ("E", "F") or "error" in l.lower()]  # glog: Error, Fatal
        return lines[-1].strip() if lines else "no error line in the log"

    def stop(self) -> None:
        """Ask Triton to exit (SIGTERM), wait, and kill it if it will not."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.config.stop_timeout_s + 5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            try:  # Python-backend stubs outlive a Triton that was killed: end its whole group
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.process is not None:
            self.remove_backend_regions()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def remove_backend_regions(self) -> list[str]:
        """Remove this Triton's Python-backend regions from /dev/shm, once its process group
        is gone: a Triton that exits cleanly removes its own, a killed one (a crash, a test,
        kill -9) leaves 1 MiB or more per model instance in memory until the machine
        restarts. Returns the names removed."""
        removed = []
        if not self.shm_prefix:
            return removed
        for path in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            try:
                path.unlink()
                removed.append(path.name)
            except FileNotFoundError:
                pass
        return removed


def python_backend_stubs(triton_pid: int) -> dict[str, int]:
    """Model name -> pid of its Python-backend stub process (a child of the tritonserver
    process ``triton_pid`` running ``<repository>/<model>/<version>/model.py``): where a
    model's memory is, for the memory bench and tests."""
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # gone meanwhile, or not a process we can read
        model_file = next((part for part in command if part.endswith(b"model.py")), None)
        if ppid == triton_pid and model_file is not None:
            stubs[Path(model_file.decode()).parts[-3]] = int(entry.name)
    return stubs


def _die_with_parent() -> None:
    """In the child: have the kernel SIGTERM Triton if the launcher dies, so a killed
    test run or demo never leaves a server holding ports and the repository."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _triton_install() -> tuple[Path, Path, Path]:
    """The binary, a backend folder prepared for this Python, and the bundled libraries."""
    root = locate(PYTRITON)
    binary = root / "bin" / "tritonserver"
    libs = root.parent.parent / "nvidia_pytriton.libs"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    python_backend = root / "backends" / "python"
    for needed in (binary, libs, stub, python_backend / "libtriton_python.so"):
        if not needed.exists():
            raise MissingPackageError(f"{needed} is missing from nvidia-pytriton", SETUP_HINT)
    backends = ProjectPaths.from_env().cache / "triton" / f"backends-py{version}"
    folder = backends / "python"
    folder.mkdir(parents=True, exist_ok=True)
    for source in (python_backend / "libtriton_python.so",
                   python_backend / "triton_python_backend_utils.py", stub):
        link = folder / source.name
        if not (link.is_symlink() and link.resolve() == source.resolve()):
            link.unlink(missing_ok=True)
            link.symlink_to(source)
    return binary, backends, libs


def _choose_ports(config: TritonConfig) -> dict[str, int]:
    chosen = {}
    for name in ("grpc_port", "http_port", "metrics_port"):
        port = getattr(config, name)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((config.host, port))
            except OSError:
                flag = "--" + name.replace("_", "-")
                raise PortInUseError(
                    f"port {port} ({name.split('_')[0]}) on {config.host} is already in use",
                    f"stop what holds it or choose another with {flag}") from None
            chosen[name] = sock.getsockname()[1]
    return chosen


def _lock_repository(repo: Path, config: TritonConfig):
    """Hold an exclusive lock on the repository for the life of this server."""
    lock_path = ProjectPaths.from_env().cache / "triton" / (
        "repo-" + str(repo).strip("/").replace("/", "_") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "{}"
        handle.close()
        info = json.loads(holder)
        raise RepositoryError(
            f"model repository {repo} is already served by Triton "
            f"(launcher pid {info.get('pid', '?')}, grpc {info.get('grpc', '?')})",
            "use that server, or stop it before starting another") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "grpc": f"{config.host}:{config.grpc_port}"}))
    handle.flush()
    return handle
