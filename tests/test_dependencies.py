"""The dependency locks: what `make` installs is what the suite last passed on, and they agree with
pyproject.toml's ranges (issue 17).

requirements.lock pins the whole tree with hashes (make run, make test, CI); deploy/requirements.lock is
its runtime part for the image. `make lock` writes both; `make test-latest` and `make test-lowest` run this
suite on other versions, so the check that the venv holds the locked versions is off there.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
DEPLOY_LOCK = ROOT / "deploy" / "requirements.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]

    def applies(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def pins(path: Path) -> list[Pin]:
    """The entries of a lock written by `uv pip compile --generate-hashes` (one package may have several,
    each for its own environment marker)."""
    out = []
    for block in re.split(r"\n(?=\S)", path.read_text()):
        head = block.split("\\", 1)[0].strip()
        if not head or head.startswith("#"):
            continue
        spec, _, marker = head.partition(";")
        name, _, ver = spec.strip().partition("==")
        assert ver, f"{path.name}: not an exact pin: {head!r}"
        out.append(Pin(canonicalize_name(name), ver.strip(), Marker(marker.strip()) if marker.strip() else None,
                       tuple(re.findall(r"--hash=(sha256:[0-9a-f]{64})", block))))
    return out


def requirements(*groups: str) -> list[Requirement]:
    """The requirements of pyproject.toml: ``"runtime"`` for [project].dependencies, else an extra."""
    out = []
    for g in groups:
        project = PYPROJECT["project"]
        src = project["dependencies"] if g == "runtime" else project["optional-dependencies"][g]
        out += [Requirement(r) for r in src]
    return out


ALL_GROUPS = ("runtime", *PYPROJECT["project"]["optional-dependencies"])


def test_every_direct_dependency_is_locked_within_its_range():
    """pyproject.toml edited without `make lock` (or a lock edited by hand) fails here, not on a user."""
    locked: dict[str, list[Pin]] = {}
    for p in pins(LOCK):
        locked.setdefault(p.name, []).append(p)
    for req in requirements(*ALL_GROUPS):
        entries = locked.get(canonicalize_name(req.name))
        assert entries, f"{req} is not in requirements.lock: run `make lock`"
        for p in entries:
            assert req.specifier.contains(p.version, prereleases=True), \
                f"requirements.lock pins {p.name}=={p.version}, outside pyproject.toml's {req}: run `make lock`"


def test_every_runtime_dependency_has_a_tested_lower_bound():
    """`pip install relay` keeps ranges; each starts at a version `make test-lowest` ran the suite on."""
    for req in requirements("runtime", "build"):
        assert any(s.operator in (">=", "==", "~=") for s in req.specifier), f"{req} has no lower bound"


def test_every_pin_has_a_hash():
    for path in (LOCK, DEPLOY_LOCK):
        for p in pins(path):
            assert p.hashes, f"{path.name}: {p.name}=={p.version} has no hash"


def test_the_image_lock_is_the_runtime_part_of_the_lock():
    """deploy/requirements.lock (the Dockerfile's) holds the same versions as requirements.lock, and only what
    relay and its build need: no test tool goes into the image."""
    whole = {(p.name, p.version) for p in pins(LOCK)}
    image = pins(DEPLOY_LOCK)
    for p in image:
        assert (p.name, p.version) in whole, f"deploy/requirements.lock: {p.name}=={p.version} is not in the lock"
    names = {p.name for p in image}
    for req in requirements("runtime", "build"):
        assert canonicalize_name(req.name) in names, f"{req.name} is missing from deploy/requirements.lock"
    for tool in ("pytest", "playwright", "locust", "matplotlib", "ruff", "uv"):
        assert tool not in names, f"{tool} would go into the image"


def test_the_build_extra_is_the_build_system():
    """The lock pins what compiles the core through the `build` extra: it must say what [build-system] says."""
    build = PYPROJECT["project"]["optional-dependencies"]["build"]
    assert sorted(PYPROJECT["build-system"]["requires"]) == sorted(build)


@pytest.mark.skipif(os.environ.get("RELAY_DEPS_UNLOCKED") == "1",
                    reason="make test-latest / test-lowest run on other versions than the lock on purpose")
def test_the_venv_holds_the_locked_versions():
    """What this suite runs on is what the lock says, so a green `make test` vouches for the lock."""
    wrong = []
    for p in pins(LOCK):
        if not p.applies():
            continue
        try:
            got = version(p.name)
        except PackageNotFoundError:
            wrong.append(f"{p.name}=={p.version} is not installed")
            continue
        if got != p.version:
            wrong.append(f"{p.name} is {got}, the lock says {p.version}")
    assert not wrong, "the venv is not the lock (make installs it from requirements.lock):\n" + "\n".join(wrong)


def test_make_ci_and_image_install_from_the_locks():
    makefile = (ROOT / "Makefile").read_text()
    stamp = makefile.split("$(STAMP): ", 1)[1].split("\n\n", 1)[0]
    assert "--require-hashes --no-deps -r $(LOCK)" in stamp and "--no-build-isolation -e ." in stamp
    assert "pip install --quiet -e" not in makefile.replace("--no-deps --no-build-isolation -e", "")
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "--requirement requirements.lock" in (ROOT / "deploy" / "Dockerfile").read_text()
