"""Files are written whole or not at all: a failed write leaves the old file and no temporary file behind."""

import stat

import pytest

from quantsense.io import atomic_output, write_atomic


def test_write_atomic_replaces_whole_file_with_mode_0644(tmp_path):
    path = tmp_path / "sub" / "results.json"
    write_atomic(path, "old\n")
    write_atomic(path, b"new bytes")
    assert path.read_bytes() == b"new bytes"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_atomic_output_error_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"previous export")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_output(path) as tmp:
            assert tmp.parent == tmp_path and tmp != path
            tmp.write_bytes(b"half a file")
            raise RuntimeError("writer failed")
    assert path.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_atomic_output_moves_the_temporary_into_place(tmp_path):
    path = tmp_path / "model.gguf"
    with atomic_output(path) as tmp:
        tmp.write_bytes(b"complete")
        assert not path.exists()
    assert path.read_bytes() == b"complete"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]
