"""Installing fedvault adds exactly one top-level name, and roles stay layered."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROLES = {
    "common": ("fedvault.server", "fedvault.client"),
    "client": ("fedvault.server",),
    "server": ("fedvault.client",),
}


def test_wheel_has_one_top_level_name(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("fedvault-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"fedvault"}
    assert "fedvault/__init__.py" not in names  # PEP 420 namespace
    for module in (
        "fedvault/common/cli.py",
        "fedvault/client/app.py",
        "fedvault/server/app.py",
    ):
        assert module in names
    assert not any(n.startswith("tests/") for n in names)


def test_installed_package_exposes_no_role_folders(tmp_path):
    code = (
        "import importlib.util as u, fedvault.server.app, fedvault.client.app;"
        "print([u.find_spec(n) is None for n in ('server','client','common','protos')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "[True, True, True, True]"


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_dependencies_point_one_way():
    wrong = []
    for role, banned in ROLES.items():
        for path in (ROOT / role).rglob("*.py"):
            if "_pb2" in path.name:
                continue
            wrong += [
                f"{path.relative_to(ROOT)} imports {m}"
                for m in _imports(path)
                if m.startswith(banned)
            ]
    assert wrong == []
