"""transformers' own common model tests, for the installed transformers release.

They ship in the transformers sdist on PyPI (tests/test_modeling_common.py,
tests/test_configuration_common.py, tests/test_training_mixin.py, ...), not in the wheel. This
module downloads that sdist with pip (`pip download --no-deps --no-binary :all:
transformers==<installed>`: PyPI is the only network CI has), extracts just the files our tester
needs into a cache folder laid out as a package, and returns the package's import name.

The sdist lacks three modules those files import (the transformers repo has them; the sdist
does not ship them). Each is replaced by a minimal shim from `shims/`, and only where the sdist
lacks it, so a release that starts shipping one gets the real file:
  * exporters/test_export.py (ExportTesterMixin, a base class of ModelTesterMixin): the shim
    adds no tests, so torch.export tests do not run;
  * generation/test_utils.py (GenerationTesterMixin): the shim is an empty class, our tester does
    not inherit it, and generation is tested by the project's own generation tests;
  * utils/test_configuration_utils.py (config_common_kwargs): the shim lists non-default values
    of PreTrainedConfig's common arguments.

Run it directly to fill the cache ahead of time: `python tests/transformers_common/fetch.py`.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

# What our tester imports from the sdist's tests/ folder.
SDIST_TEST_FILES = ("test_modeling_common.py", "test_configuration_common.py", "test_training_mixin.py")
# Modules those files import that the sdist may lack -> the shim that stands in for each.
SHIMS = {
    "exporters/test_export.py": "shim_export.py",
    "generation/test_utils.py": "shim_generation.py",
    "utils/test_configuration_utils.py": "shim_configuration_utils.py",
}
SHIM_DIR = Path(__file__).parent / "shims"
MANIFEST = "manifest.json"


class CommonTestsUnavailable(RuntimeError):
    """The sdist of the installed transformers could not be fetched (offline, or a dev build)."""


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hf-nanochat" / "transformers-common-tests"
    return Path(os.environ.get("HF_NANOCHAT_TRANSFORMERS_TESTS_CACHE", default))


def package_name(version: str) -> str:
    return "transformers_common_tests_" + "".join(c if c.isalnum() else "_" for c in version)


def download_sdist(version: str, into: Path, timeout: float = 600) -> Path:
    """The transformers==version sdist, downloaded by pip into `into`."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", str(into),
           "--disable-pip-version-check", "--quiet", f"transformers=={version}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise CommonTestsUnavailable(f"`{' '.join(cmd)}` took over {timeout:.0f} s") from err
    archives = sorted(into.glob(f"transformers-{version}.tar.gz"))
    if done.returncode or not archives:
        raise CommonTestsUnavailable(
            f"could not download the transformers {version} sdist from the package index "
            f"(`{' '.join(cmd)}` exited {done.returncode}): {done.stderr.strip()[-800:]}"
        )
    return archives[0]


def extract(archive: Path, version: str, package_dir: Path) -> dict:
    """Writes the needed test files (and shims where the sdist lacks a module) into package_dir."""
    prefix = f"transformers-{version}/tests/"
    with tarfile.open(archive, "r:gz") as tar:
        members = {m.name[len(prefix):]: m for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix)}
        missing = [name for name in SDIST_TEST_FILES if name not in members]
        if missing:
            raise CommonTestsUnavailable(f"the transformers {version} sdist has no tests/{', tests/'.join(missing)}")
        # Only named regular files are read, each written to a path we build: no archive paths are trusted.
        for name in (*SDIST_TEST_FILES, *(n for n in SHIMS if n in members)):
            target = package_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(members[name]).read())
    shimmed = []
    for name, shim in SHIMS.items():
        target = package_dir / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SHIM_DIR / shim, target)
            shimmed.append(name)
    for module in list(package_dir.rglob("*.py")):  # relative imports need every folder to be a package
        folder = module.parent
        while folder != package_dir.parent:
            (folder / "__init__.py").touch()
            folder = folder.parent
    return {"transformers_version": version, "sdist": archive.name, "shimmed": shimmed}


def fetch(version: str | None = None, root: Path | None = None) -> tuple[Path, dict]:
    """(folder to put on sys.path, manifest) for the common tests of transformers `version`.

    Cached per version under `root`: the download happens once per release."""
    version = version or transformers.__version__
    root = root or cache_root()
    home = root / version
    package_dir = home / package_name(version)
    manifest_path = package_dir / MANIFEST
    if manifest_path.exists():
        return home, json.loads(manifest_path.read_text())
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        scratch = Path(scratch)
        archive = download_sdist(version, scratch)
        staged = scratch / "staged" / package_name(version)
        staged.mkdir(parents=True)
        manifest = extract(archive, version, staged)
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=1))
        home.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(package_dir, ignore_errors=True)
        staged.rename(package_dir)  # complete or absent: a crash never leaves half a package
    return home, manifest


def import_common_tests(version: str | None = None, root: Path | None = None):
    """(test_modeling_common, test_configuration_common, test_training_mixin, manifest) modules."""
    home, manifest = fetch(version, root)
    if str(home) not in sys.path:
        sys.path.insert(0, str(home))
    name = package_name(manifest["transformers_version"])
    try:
        modules = [importlib.import_module(f"{name}.{f.removesuffix('.py')}") for f in SDIST_TEST_FILES]
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == name:
            raise
        # transformers' test dependencies (its `testing` extra), e.g. `parameterized`
        raise CommonTestsUnavailable(f"transformers' common tests import {err.name!r}: pip install {err.name}") from err
    return (*modules, manifest)


if __name__ == "__main__":
    home, manifest = fetch()
    print(f"transformers {manifest['transformers_version']} common tests in {home / package_name(manifest['transformers_version'])}"
          f" (shims for: {', '.join(manifest['shimmed']) or 'nothing'})")
