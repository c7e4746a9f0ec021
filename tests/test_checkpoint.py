"""Atomic writes (mode follows the umask) and one-line errors for unusable checkpoint files."""

import os
import pickle
import stat

import pytest
import torch

from absa import checkpoint as ckpt_io


class _Custom:  # a class torch's weights-only loader refuses
    pass


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expect", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_mode_follows_umask(tmp_path, umask, mask, expect):
    umask(mask)
    ckpt_io.save(tmp_path / "run" / "last.pt", {"x": torch.ones(2)})
    ckpt_io.atomic_write_text(tmp_path / "run" / "summary.json", "{}")
    assert _mode(tmp_path / "run" / "last.pt") == expect
    assert _mode(tmp_path / "run" / "summary.json") == expect
    assert os.umask(mask) == mask  # the write left the umask as it was
    assert ckpt_io._umask() == mask
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []


def test_save_load_round_trip(tmp_path):
    ckpt_io.save(tmp_path / ckpt_io.LAST, {"epoch": 3, "w": torch.arange(4.0)})
    ck = ckpt_io.load(tmp_path)  # a folder means its last.pt
    assert ck["epoch"] == 3 and ck["format_version"] == ckpt_io.FORMAT_VERSION
    assert torch.equal(ck["w"], torch.arange(4.0))


def _write_unsafe(path):
    torch.save({"format_version": 1, "obj": _Custom()}, path)


def _write_truncated(path):
    torch.save({"format_version": 1, "w": torch.ones(100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "write, reason",
    [
        (lambda p: p.write_bytes(b"garbage\n" * 4), "not a torch checkpoint: unrecognized"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(pickle.dumps({"a": 1}, protocol=4)), "not a torch checkpoint"),
        (_write_truncated, "corrupt or truncated torch checkpoint: PytorchStreamReader"),
        (_write_unsafe, "safe loading refuses: Unsupported global: GLOBAL"),
    ],
)
def test_unusable_file_is_one_line_without_torch_advice(tmp_path, write, reason):
    path = tmp_path / "bad.pt"
    write(path)
    with pytest.raises(ckpt_io.CheckpointError) as e:
        ckpt_io.load(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: not a readable absa checkpoint (") and reason in msg
    assert "\n" not in msg and "weights_only" not in msg and "trust" not in msg


def test_torch_file_without_format_version(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "plain.pt")
    with pytest.raises(ckpt_io.CheckpointError, match="not an absa checkpoint"):
        ckpt_io.load(tmp_path / "plain.pt")


def test_missing_and_newer_checkpoints(tmp_path):
    with pytest.raises(ckpt_io.CheckpointError, match="checkpoint not found"):
        ckpt_io.load(tmp_path / "nope.pt")
    torch.save({"format_version": ckpt_io.FORMAT_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(ckpt_io.CheckpointError, match="newer than this absa"):
        ckpt_io.load(tmp_path / "new.pt")
