"""Each package names its public objects in ``__all__``; they resolve, and
importing a package stays cheap (no torch, Flower or pandas until asked for)."""

import importlib
import importlib.util
import subprocess
import sys

import pytest

PACKAGES = (
    "fedvault.common",
    "fedvault.client",
    "fedvault.client.data",
    "fedvault.server",
)


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_name_resolves(name):
    package = importlib.import_module(name)
    assert package.__all__ == sorted(package.__all__)
    assert package.__all__, f"{name} names no public object"
    for public in package.__all__:
        # a public object must not share its name with a submodule, which would
        # replace it on the package once imported
        assert importlib.util.find_spec(f"{name}.{public}") is None, public
        obj = getattr(package, public)
        assert obj.__name__ == public
        assert obj.__module__.startswith(name)
    with pytest.raises(AttributeError, match="no attribute"):
        package.not_a_public_name  # noqa: B018


def test_importing_the_packages_imports_nothing_heavy():
    code = (
        "import sys\n"
        f"for name in {PACKAGES!r}: __import__(name)\n"
        "heavy = ('torch', 'flwr', 'pandas', 'opacus')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == ""
