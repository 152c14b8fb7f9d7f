"""Build the installable Blender extension zip.

    python build_addon.py                 # -> wheels/*.whl and dist/fastavatar-<version>.zip
    python build_addon.py --no-download   # reuse wheels already in wheels/ for third-party packages

Steps: (1) build the engine's own pure-Python wheel into ``wheels/``; (2) fetch the pure-Python
wheels the client side needs (plyfile) from the package index unless already present; (3) write
the manifest's ``wheels = [...]`` from the files actually there and validate the manifest
(required keys, Blender version, every wheel present and ``py3-none-any``); (4) zip
``blender_addon/`` plus ``wheels/`` into ``dist/``; (5) when a ``blender`` binary is on PATH, run
``blender --command extension validate`` on the zip. Exits non-zero with a message on any problem.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "blender_addon"
WHEELS = ROOT / "wheels"
DIST = ROOT / "dist"
#: Third-party pure-Python wheels the add-on's client side imports (numpy ships with Blender).
CLIENT_REQUIREMENTS = ["plyfile==1.1.3"]
REQUIRED_KEYS = ("schema_version", "id", "version", "name", "tagline", "maintainer", "type",
                 "blender_version_min", "license")


class BuildError(RuntimeError):
    """The extension cannot be built; the message says why."""


def project_version() -> str:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data["project"]["version"]


def build_engine_wheel(out: Path) -> Path:
    """Build the ``fastavatar`` wheel (no dependencies) into ``out``; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("fastavatar-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp, str(ROOT)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"engine wheel build failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        built = list(Path(tmp).glob("fastavatar-*.whl"))
        if len(built) != 1:
            raise BuildError(f"expected one fastavatar wheel, found {built}")
        return Path(shutil.move(str(built[0]), out / built[0].name))


def fetch_client_wheels(out: Path, download: bool) -> list[Path]:
    """Pure-Python wheels of :data:`CLIENT_REQUIREMENTS` in ``out`` (downloaded when missing)."""
    paths = []
    for req in CLIENT_REQUIREMENTS:
        name, version = req.split("==")
        found = sorted(out.glob(f"{name}-{version}-*.whl"))
        if not found and download:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "--python-version", "3.11", "-d", str(out), req]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise BuildError(f"could not fetch {req}: {proc.stderr[-1500:]}")
            found = sorted(out.glob(f"{name}-{version}-*.whl"))
        if not found:
            raise BuildError(f"{req}: no wheel in {out} (run without --no-download)")
        paths.append(found[-1])
    return paths


def manifest_with_wheels(text: str, wheels: list[Path]) -> str:
    """The manifest text with its ``wheels = [...]`` array replaced by ``wheels``' file names."""
    listing = "wheels = [\n" + "".join(f'  "./wheels/{w.name}",\n' for w in wheels) + "]"
    new, n = re.subn(r"(?ms)^wheels\s*=\s*\[.*?\]", listing, text)
    if n != 1:
        raise BuildError("blender_manifest.toml: expected exactly one 'wheels = [...]' array")
    return new


def validate_manifest(text: str, wheel_dir: Path, version: str) -> dict:
    """Check the manifest; returns the parsed TOML. Raises :class:`BuildError` listing problems."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"blender_manifest.toml: invalid TOML ({exc})") from exc
    problems = [f"missing key '{k}'" for k in REQUIRED_KEYS if k not in data]
    if data.get("type") not in ("add-on", "theme"):
        problems.append(f"type must be 'add-on', got {data.get('type')!r}")
    if data.get("version") != version:
        problems.append(f"version {data.get('version')!r} differs from pyproject's {version!r}")
    bmin = str(data.get("blender_version_min", ""))
    if not re.fullmatch(r"\d+\.\d+\.\d+", bmin) or tuple(map(int, bmin.split("."))) < (4, 2, 0):
        problems.append(f"blender_version_min must be >= 4.2.0, got {bmin!r}")
    for entry in data.get("wheels", []):
        path = wheel_dir / Path(entry).name
        if not path.is_file():
            problems.append(f"wheel listed but missing: {entry}")
        elif not path.name.endswith("-py3-none-any.whl"):
            problems.append(f"wheel is not pure Python (py3-none-any): {path.name}")
    if problems:
        raise BuildError("blender_manifest.toml: " + "; ".join(problems))
    return data


def build(download: bool = True, dist: Path = DIST) -> Path:
    """Run every step; returns the zip's path."""
    version = project_version()
    wheels = [build_engine_wheel(WHEELS)] + fetch_client_wheels(WHEELS, download)
    manifest = manifest_with_wheels((ADDON / "blender_manifest.toml").read_text(), wheels)
    validate_manifest(manifest, WHEELS, version)
    dist.mkdir(parents=True, exist_ok=True)
    zip_path = dist / f"fastavatar-{version}.zip"
    tmp = zip_path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(ADDON.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.name != "blender_manifest.toml":
                zf.write(f, f.relative_to(ADDON).as_posix())
        zf.writestr("blender_manifest.toml", manifest)
        zf.write(ROOT / "constraints.txt", "constraints.txt")  # Install Engine pins the checked set
        for w in wheels:
            zf.write(w, f"wheels/{w.name}")
    tmp.replace(zip_path)
    blender = shutil.which("blender")
    if blender:
        proc = subprocess.run([blender, "--command", "extension", "validate", str(zip_path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"blender extension validate failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return zip_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-download", action="store_true", help="do not fetch third-party wheels")
    ap.add_argument("--dist", type=Path, default=DIST, help="output folder for the zip (default dist/)")
    args = ap.parse_args(argv)
    try:
        path = build(download=not args.no_download, dist=args.dist)
    except BuildError as exc:
        print(f"build_addon: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
