"""Atomic writes (mode follows the umask) and one-line errors for unusable checkpoint files."""

import os
import pickle
import stat

import pytest
import torch

from absa.run import checkpoint as ckpt_io
from absa.run import folder


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


def test_checkpoint_names_and_writes_are_the_run_folders():
    """absa.run.folder owns the file names and the atomic writes; checkpoint re-exports them."""
    assert (ckpt_io.LAST, ckpt_io.PREV) == (folder.LAST, folder.PREV) == ("last.pt", "prev.pt")
    assert ckpt_io.atomic_write_text is folder.atomic_write_text
    assert ckpt_io.atomic_write_bytes is folder.atomic_write_bytes
    assert ckpt_io.DiskFullError is folder.DiskFullError


@pytest.mark.parametrize("mask, expect", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_mode_follows_umask(tmp_path, umask, mask, expect):
    umask(mask)
    ckpt_io.save(tmp_path / "run" / "last.pt", {"x": torch.ones(2)})
    ckpt_io.atomic_write_text(tmp_path / "run" / "summary.json", "{}")
    assert _mode(tmp_path / "run" / "last.pt") == expect
    assert _mode(tmp_path / "run" / "summary.json") == expect
    assert os.umask(mask) == mask  # the write left the umask as it was
    assert folder._umask() == mask
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []


def _payload(**changes):
    """What absa.engine.loop saves each epoch, with ``changes`` (a value of ... drops the entry)."""
    payload = {
        "model": {"w": torch.arange(4.0), "n": torch.tensor(2)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "policy": {"kind": "abs", "segments": [[0, 64, 1.0, 0.0]], "reference": 2.5},
        "epoch": 3,
        "updates": 12,
        "best_test_acc": 91.5,
        "growths": [{"epoch": 1, "new_batch": 128}],
        "hessian_vector": None,
        "config": {"model": {"name": "mlp"}},
        "arch": "mlp",
        "rng": ckpt_io.rng_state(),
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not ...}


@pytest.mark.parametrize(
    "vector", [None, torch.ones(3), [torch.ones(2), torch.zeros(1)]], ids=["none", "t", "list"]
)
def test_save_load_round_trip(tmp_path, vector):
    ckpt_io.save(tmp_path / ckpt_io.LAST, _payload(hessian_vector=vector))
    ck = ckpt_io.load(tmp_path)  # a folder means its last.pt
    assert ck["epoch"] == 3 and ck["format_version"] == ckpt_io.FORMAT_VERSION
    assert torch.equal(ck["model"]["w"], torch.arange(4.0))
    assert torch.equal(ck["rng"]["torch"], _payload()["rng"]["torch"])
    assert ck["policy"] == _payload()["policy"] and ck["growths"] == _payload()["growths"]
    got = ck["hessian_vector"]
    if isinstance(vector, list):
        assert len(got) == 2 and all(map(torch.equal, got, vector))
    else:
        assert got is None if vector is None else torch.equal(got, vector)


def test_load_uses_safe_unpickling(tmp_path, monkeypatch):
    seen = {}
    real = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    ckpt_io.save(tmp_path / "a.pt", _payload())
    monkeypatch.setattr(torch, "load", spy)
    ckpt_io.load(tmp_path / "a.pt")
    assert seen.get("weights_only") is True


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"config": ...}, "missing 'config'"),
        ({"epoch": ..., "updates": ...}, "missing 'epoch', 'updates'"),
        ({"model": [1, 2]}, "'model' should be a state dict of tensors (got list)"),
        ({"model": {"w": [1.0]}}, "'model' should be a state dict of tensors ('w' is list)"),
        ({"config": "mlp"}, "'config' should be a dict (the run's config) (got str 'mlp')"),
        ({"epoch": "3"}, "'epoch' should be an int >= 0 (got str '3')"),
        ({"epoch": True}, "'epoch' should be an int >= 0 (got bool True)"),
        ({"updates": -1}, "'updates' should be an int >= 0 (got int -1)"),
        (
            {"hessian_vector": [1.0]},
            "'hessian_vector' should be a tensor, a list of tensors or None (got list)",
        ),
        ({"rng": {}}, "'rng' should be a dict with a 'torch' RNG state tensor (got dict)"),
        ({"record": [1]}, "'record' should be a dict (the epoch's metrics) (got list)"),
    ],
)
def test_malformed_checkpoint_is_one_line(tmp_path, changes, reason):
    path = tmp_path / "m.pt"
    ckpt_io.save(path, _payload(**changes))
    with pytest.raises(ckpt_io.CheckpointError) as e:
        ckpt_io.load(path)
    assert str(e.value) == f"{path}: malformed absa checkpoint: {reason}"


@pytest.mark.parametrize("version, got", [("1", "str '1'"), (0, "int 0"), (None, "None")])
def test_bad_format_version_is_one_line(tmp_path, version, got):
    torch.save({**_payload(), "format_version": version}, tmp_path / "v.pt")
    with pytest.raises(ckpt_io.CheckpointError) as e:
        ckpt_io.load(tmp_path / "v.pt")
    assert str(e.value) == (
        f"{tmp_path / 'v.pt'}: not an absa checkpoint (format_version should be an int >= 1, "
        f"got {got})"
    )


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
