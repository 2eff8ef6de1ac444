"""Install detectron2 v0.6 as a pure-Python package from PyPI's ``pb1-detectron2==0.6`` sdist.

Why: detectron2 publishes no wheels, and the ``pb1-detectron2`` sdist (whose Python files are upstream v0.6 exactly)
lacks the C++ sources, so its own ``setup.py`` build fails. pvt_d2 needs none of the compiled ops, so we install the
sdist's ``detectron2/`` package (model-zoo configs included) through a minimal pyproject with no extension modules.
``pvt_d2.compat`` then supplies a stand-in for ``detectron2._C``.

If ``import detectron2`` already works (for example a detectron2 you built from source with its compiled ops), this
script leaves it alone.

Usage: ``python scripts/install_detectron2.py``  (uses the same interpreter's pip; run after requirements.txt)
"""
import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "pb1-detectron2==0.6"

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "detectron2"
version = "0.6"
description = "detectron2 v0.6, Python files only (installed by pvt_d2's scripts/install_detectron2.py)"
license = { text = "Apache-2.0" }

[tool.setuptools.packages.find]
include = ["detectron2*"]

[tool.setuptools.package-data]
"*" = ["*.yaml", "*.py"]
"detectron2.model_zoo" = ["configs/**/*.yaml", "configs/**/*.py"]
"""


def installed_detectron2() -> str:
    """The path of an importable detectron2 (checked in a fresh interpreter), or '' if there is none."""
    probe = subprocess.run(
        [sys.executable, "-c", "import detectron2, os; print(os.path.dirname(detectron2.__file__))"],
        capture_output=True,
        text=True,
    )
    return probe.stdout.strip() if probe.returncode == 0 else ""


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if detectron2 is importable")
    args = parser.parse_args()

    existing = installed_detectron2()
    if existing and not args.force:
        print(f"detectron2 is already importable from {existing}; leaving it alone.")
        return 0

    with tempfile.TemporaryDirectory(prefix="pvt_d2_detectron2_") as tmp:
        tmp = Path(tmp)
        # --no-build-isolation: pip prepares the sdist's metadata with its setup.py, which imports torch.
        pip("download", "--no-deps", "--no-build-isolation", "--no-binary", ":all:", SDIST, "-d", str(tmp / "dl"))
        archives = sorted((tmp / "dl").glob("*.tar.gz"))
        if len(archives) != 1:
            raise SystemExit(f"expected one sdist archive in {tmp / 'dl'}, found {[a.name for a in archives]}")
        src = tmp / "src"
        src.mkdir()
        with tarfile.open(archives[0]) as tar:
            members = []
            for m in tar.getmembers():
                parts = Path(m.name).parts
                if len(parts) >= 2 and parts[1] in ("detectron2", "LICENSE"):
                    m.name = str(Path(*parts[1:]))
                    members.append(m)
            if not members:
                raise SystemExit(f"{archives[0].name} holds no detectron2/ package")
            tar.extractall(src, members=members, filter="data")
        (src / "pyproject.toml").write_text(PYPROJECT)
        pip("install", "--no-deps", "--no-build-isolation", str(src))

    where = installed_detectron2()
    if not where:
        raise SystemExit("detectron2 was installed but does not import; see the pip output above")
    print(f"detectron2 0.6 (Python files only) installed at {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
