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
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "pb1-detectron2==0.6"
SDIST_FILE = "pb1-detectron2-0.6.tar.gz"

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


def index_url() -> str:
    """The index pip is configured with (PIP_INDEX_URL, pip config), else PyPI."""
    url = os.environ.get("PIP_INDEX_URL", "")
    if not url:
        probe = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                               capture_output=True, text=True)
        url = probe.stdout.strip() if probe.returncode == 0 else ""
    return (url or "https://pypi.org/simple").rstrip("/")


def download_from_index(dest: Path) -> Path:
    """Fetch the sdist through the index's simple API (PEP 691 JSON or PEP 503 HTML), checking its sha256."""
    import urllib.parse
    import urllib.request

    page = f"{index_url()}/pb1-detectron2/"
    req = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(req, timeout=120) as r:
        body = r.read().decode()
        json_api = "json" in r.headers.get("content-type", "")
    if json_api:
        files = {f["filename"]: (f["url"], f["hashes"].get("sha256")) for f in json.loads(body)["files"]}
    else:
        files = {m.group(3): (urllib.parse.urljoin(page, m.group(1)), m.group(2))
                 for m in re.finditer(r'href="([^"#]+)(?:#sha256=([0-9a-f]+))?"[^>]*>([^<]+)<', body)}
    if SDIST_FILE not in files:
        raise RuntimeError(f"{page} lists no {SDIST_FILE}")
    url, sha256 = files[SDIST_FILE]
    print(f"+ download {url}", flush=True)
    with urllib.request.urlopen(url, timeout=300) as r:
        data = r.read()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"{url}: sha256 mismatch (expected {sha256})")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / SDIST_FILE).write_bytes(data)
    return dest / SDIST_FILE


def download_sdist(dest: Path) -> Path:
    """The sdist, from the index's simple API; else through ``pip download``.

    ``pip download`` alone is not enough: pip >= 25 refuses the sdist's metadata (it declares a direct-URL extra),
    even with --no-deps.
    """
    try:
        return download_from_index(dest)
    except Exception as e:  # e.g. an index reachable only through pip's own configuration
        print(f"simple-API download failed ({e}); trying pip download", flush=True)
    # --no-build-isolation: pip prepares the sdist's metadata with its setup.py, which imports torch.
    pip("download", "--no-deps", "--no-build-isolation", "--no-binary", ":all:", SDIST, "-d", str(dest))
    archives = sorted(dest.glob("*.tar.gz"))
    if len(archives) != 1:
        raise SystemExit(f"expected one sdist archive in {dest}, found {[a.name for a in archives]}")
    return archive


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
        archive = download_sdist(tmp / "dl")
        src = tmp / "src"
        src.mkdir()
        with tarfile.open(archive) as tar:
            members = []
            for m in tar.getmembers():
                parts = Path(m.name).parts
                if len(parts) >= 2 and parts[1] in ("detectron2", "LICENSE"):
                    m.name = str(Path(*parts[1:]))
                    members.append(m)
            if not members:
                raise SystemExit(f"{archive.name} holds no detectron2/ package")
            tar.extractall(src, members=members, filter="data")
        (src / "pyproject.toml").write_text(PYPROJECT)
        pip("install", "--no-deps", str(src))

    where = installed_detectron2()
    if not where:
        raise SystemExit("detectron2 was installed but does not import; see the pip output above")
    print(f"detectron2 0.6 (Python files only) installed at {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
