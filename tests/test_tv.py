"""The torchvision fix-up is applied only for the missing-op error, and only once."""

import importlib
import sys
import types

import pytest

from absa import tv


def test_torchvision_parts_work():
    models = tv.load("torchvision.models")
    v2 = tv.load("torchvision.transforms.v2")
    assert hasattr(models, "resnet18") and hasattr(v2, "RandomCrop")
    with pytest.raises(ValueError):
        tv.load("numpy")


class _Finder:
    """A meta-path finder serving a fake ``torchvision`` whose import runs ``body``."""

    def __init__(self, body):
        self.body = body

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        self.body(module)


@pytest.fixture
def fake_torchvision(monkeypatch):
    saved = {
        k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")
    }
    for k in saved:
        monkeypatch.delitem(sys.modules, k)
    finders = []

    def install(body):
        f = _Finder(body)
        sys.meta_path.insert(0, f)
        finders.append(f)

    yield install
    for f in finders:
        sys.meta_path.remove(f)
    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def test_matching_pair_is_untouched(fake_torchvision, monkeypatch):
    fake_torchvision(lambda m: setattr(m, "ok", True))
    monkeypatch.setattr(tv, "_library", None)
    mod = tv._import_torchvision()
    assert isinstance(mod, types.ModuleType) and mod.ok
    assert tv._library is None  # no schemas defined for a working install


def test_other_errors_propagate(fake_torchvision, monkeypatch):
    def broken(_m):
        raise RuntimeError("something else entirely")

    fake_torchvision(broken)
    monkeypatch.setattr(tv, "_library", None)
    with pytest.raises(RuntimeError, match="something else"):
        tv._import_torchvision()
    assert tv._library is None
