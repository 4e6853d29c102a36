"""The Docker images built and run for real with podman (Debian's package; scripts/check
installs it when it runs as root).

Both images are built from docker/Dockerfile.* and run as compose.yml says (the same
commands, environment, named volumes, read-only root, tmpfs, init, one network with the
service names as host names), translated to ``podman run``: the init services, then a
coordinator and two sites for one round. Skipped, with the reason, where no engine can
run a container here.

Where Docker Hub is out of reach the base image is a Debian bookworm root made with
``debootstrap`` from the Debian mirror (python3 3.11, as the pinned python image);
pip inside the build gets every wheel from a local index filled by this machine's pip
(``PIP_INDEX_URL`` / ``TORCH_INDEX`` build arguments), so the build needs no other
registry than the ones this machine's pip and apt use.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import threading
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import tomli_w
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
FALLBACK_BASE = "localhost/fedvault-test-python:3.11-bookworm"
SITES = ("hospital-a", "hospital-b")
INDEX_PORT = 8765


@dataclass(frozen=True)
class Engine:
    podman: str
    flags: tuple[str, ...]  # for `run` and `build` (runtime, limits)
    base: str

    def __call__(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.podman, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert done.returncode == 0, (
                args,
                done.stdout[-3000:],
                done.stderr[-3000:],
            )
        return done


def _default_base() -> str:
    for line in (DOCKER / "Dockerfile.server").read_text().splitlines():
        if line.startswith("ARG PYTHON_IMAGE="):
            return line.split("=", 1)[1]
    raise AssertionError("Dockerfile.server names no PYTHON_IMAGE")


def _podman(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    podman = shutil.which("podman")
    assert podman is not None
    return subprocess.run(
        [podman, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _base_image() -> str:
    """The Dockerfiles' pinned python image, or a debootstrapped bookworm."""
    wanted = _default_base()
    pulled = _podman("pull", "-q", wanted, timeout=180)
    if pulled.returncode == 0:
        return wanted
    if _podman("image", "exists", FALLBACK_BASE, timeout=30).returncode == 0:
        return FALLBACK_BASE
    if shutil.which("debootstrap") is None:
        pytest.skip(
            f"cannot pull {wanted} ({pulled.stderr.strip()[-300:]}) "
            "and debootstrap is not installed"
        )
    root = Path("/var/tmp") / f"fedvault-bookworm-{uuid.uuid4().hex[:8]}"
    try:
        made = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,python-is-python3,ca-certificates",
                "bookworm",
                str(root),
                "http://deb.debian.org/debian",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if made.returncode != 0:
            pytest.skip(
                f"cannot pull {wanted} nor debootstrap bookworm: "
                f"{made.stderr.strip()[-300:]}"
            )
        tar = subprocess.Popen(
            ["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE
        )
        podman = shutil.which("podman")
        assert podman is not None and tar.stdout is not None
        with tar.stdout:  # closed here: an open pipe is a ResourceWarning (an error)
            subprocess.run(
                [podman, "import", "-", FALLBACK_BASE],
                stdin=tar.stdout,
                capture_output=True,
                timeout=600,
                check=True,
            )
        tar.wait(timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return FALLBACK_BASE


def _run_flags(base: str) -> tuple[str, ...]:
    """Podman's defaults, or runc with limits no higher than this machine's (a
    container here may lack CAP_SYS_RESOURCE, and crun refuses hybrid cgroups)."""
    import resource

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    tries = [
        (),
        (
            "--runtime",
            "runc",
            "--ulimit",
            f"nofile={nofile}:{nofile}",
            "--ulimit",
            "nproc=4096:4096",
        ),
    ]
    errors = []
    for flags in tries:
        ran = _podman("run", "--rm", *flags, base, "python3", "-c", "pass", timeout=180)
        if ran.returncode == 0:
            return flags
        errors.append(ran.stderr.strip()[-300:])
    pytest.skip(f"podman cannot run a container here: {' / '.join(errors)}")


@pytest.fixture(scope="module")
def engine() -> Engine:
    podman = shutil.which("podman")
    if podman is None:
        pytest.skip("podman is not installed (scripts/check installs it as root)")
    base = _base_image()
    return Engine(podman, _run_flags(base), base)


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Iterator[str]:
    """A local package index with every wheel the images install, from this
    machine's pip (whose certificates and mirrors the build cannot see)."""
    wheels = tmp_path_factory.mktemp("wheels")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch = _torch_version()
    reqs = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    reqs = [r for r in reqs if not r.startswith("torch>=")] + [f"torch=={torch}+cpu"]
    # torch's CPU wheel from this machine's pip configuration, else from its index
    # (asked only then: an index out of reach costs retries for every package)
    for extra in ((), ("--extra-index-url", "https://download.pytorch.org/whl/cpu")):
        got = subprocess.run(
            [
                "pip",
                "download",
                "-q",
                "--only-binary=:all:",
                "-d",
                str(wheels),
                *extra,
                *reqs,
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if got.returncode == 0:
            break
    else:
        pytest.skip(f"pip cannot download the images' wheels: {got.stderr[-300:]}")
    simple = tmp_path_factory.mktemp("simple")
    for wheel in wheels.glob("*.whl"):
        name = wheel.name.split("-")[0].lower().replace("_", "-").replace(".", "-")
        (simple / name).mkdir(exist_ok=True)
        wheel.rename(simple / name / wheel.name)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(simple))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    try:  # the same URL each time, so that podman's layer cache applies again
        server = ThreadingHTTPServer(("127.0.0.1", INDEX_PORT), handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _torch_version() -> str:
    for line in (DOCKER / "Dockerfile.server").read_text().splitlines():
        if line.startswith("ARG TORCH_VERSION="):
            return line.split("=", 1)[1]
    raise AssertionError("Dockerfile.server names no TORCH_VERSION")


@pytest.fixture(scope="module")
def images(engine: Engine, index: str) -> dict[str, str]:
    tags = {}
    for role in ("server", "client"):
        tag = f"localhost/fedvault-{role}:test"
        engine(
            "build",
            "--network",
            "host",
            *engine.flags,
            "--build-arg",
            f"PYTHON_IMAGE={engine.base}",
            "--build-arg",
            f"TORCH_INDEX={index}",
            "--build-arg",
            f"PIP_INDEX_URL={index}",
            "-f",
            str(DOCKER / f"Dockerfile.{role}"),
            "-t",
            tag,
            str(ROOT),
            timeout=1800,
        )
        tags[role] = tag
    return tags


def test_each_image_runs_fedvault(engine: Engine, images: dict[str, str]):
    for tag in images.values():
        done = engine("run", "--rm", *engine.flags, tag, "--version", timeout=120)
        assert "fedvault" in done.stdout
        user = engine("run", "--rm", *engine.flags, "--entrypoint", "id", tag, "-u")
        assert user.stdout.strip() == "10001"


def _run_args(
    name: str,
    service: dict,
    prefix: str,
    images: dict[str, str],
    binds: dict[str, Path],
) -> list[str]:
    """`podman run` arguments for a compose service (named volumes and the network
    get PREFIX; BINDS replaces a bind-mounted file by container path)."""
    args = ["--name", f"{prefix}-{name}", "--network", prefix, "--network-alias", name]
    if service.get("init"):
        args.append("--init")
    if service.get("read_only"):
        args.append("--read-only")
    for path in service.get("tmpfs", []):
        args += ["--tmpfs", path]
    for key, value in service.get("environment", {}).items():
        args += ["-e", f"{key}={value}"]
    for volume in service["volumes"]:
        source, target, *mode = volume.split(":")
        if source.startswith("."):
            source = str(binds.get(target, (DOCKER / source).resolve()))
        else:
            source = f"{prefix}-{source}"
        args += ["-v", ":".join([source, target, *mode])]
    role = "server" if "server" in service["build"]["dockerfile"] else "client"
    return [*args, images[role], *service["command"]]


def _one_round_coordinator(folder: Path) -> Path:
    """compose.yml's coordinator.toml for one round with the first two sites."""
    cfg = tomllib.loads(
        (DOCKER / "consortium/coordinator/coordinator.toml").read_text()
    )
    cfg["coordinator"]["expected-sites"] = len(SITES)
    cfg["training"].update({"rounds": 1, "min-sites": len(SITES)})
    cfg["sites"] = {name: cfg["sites"][name] for name in SITES}
    folder.chmod(0o755)  # readable by the containers' user
    path = folder / "coordinator.toml"
    path.write_text(tomli_w.dumps(cfg))
    path.chmod(0o644)
    return path


def test_compose_services_prepare_keys_and_run_one_round(
    engine: Engine, images: dict[str, str], tmp_path: Path
):
    services = yaml.safe_load((DOCKER / "compose.yml").read_text())["services"]
    prefix = f"fvtest-{uuid.uuid4().hex[:8]}"
    binds = {"/config/coordinator.toml": _one_round_coordinator(tmp_path)}
    run = functools.partial(_run_args, prefix=prefix, images=images, binds=binds)
    started: list[str] = []
    engine("network", "create", prefix)
    try:
        for name in ("init-coordinator", *(f"init-{s}" for s in SITES)):
            done = engine(
                "run", "--rm", *engine.flags, *run(name, services[name]), timeout=900
            )
            assert "shared" in done.stderr, done.stderr
        again = engine(
            "run",
            "--rm",
            *engine.flags,
            *run("init-hospital-a", services["init-hospital-a"]),
        )
        assert "wrote" not in again.stdout + again.stderr  # nothing made twice
        for name in ("coordinator", *SITES):
            engine("run", "-d", *engine.flags, *run(name, services[name]))
            started.append(f"{prefix}-{name}")
        waited = engine("wait", f"{prefix}-coordinator", timeout=1200)
        logs = {
            name: engine("logs", container).stdout + engine("logs", container).stderr
            for name, container in zip(("coordinator", *SITES), started, strict=True)
        }
        assert waited.stdout.strip() == "0", logs["coordinator"][-3000:]
        assert "SuperLink" in logs["coordinator"], logs["coordinator"][-3000:]
        for site in SITES:
            assert "SuperNode" in logs[site], logs[site][-3000:]  # Flower's own line
            assert f"site {site}: the coordinator accepted this site" in logs[site]
    finally:
        for container in started:
            engine("rm", "-f", "-t", "5", container, check=False)
        volumes = engine(
            "volume", "ls", "-q", "--filter", f"name={prefix}-", check=False
        )
        for volume in volumes.stdout.split():
            engine("volume", "rm", "-f", volume, check=False)
        engine("network", "rm", "-f", prefix, check=False)
