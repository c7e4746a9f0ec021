"""The documented Python API: the README's example runs as written; a user's nn.Module and
tensors train through absa.train; top_eigenvalues equals a dense Hessian of the head."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import absa

ROOT = Path(__file__).resolve().parent.parent


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- python-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its marked Python example"
    return m.group(1)


def test_readme_python_example_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(ROOT)
    code = _readme_example()
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})  # noqa: S102
    out = capsys.readouterr().out
    assert "final batch" in out and "eigenvalues" in out and "pgd" in out


class TinyNet(nn.Module):
    """A user's own module in absa's shape: features -> classifier, normalizing inside."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh())
        self.classifier = nn.Linear(16, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - 0.5) / 0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def test_user_module_and_tensors_train_and_match_a_dense_head_hessian(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) * 6).long().clamp(0, 2)
    data = absa.tensor_data(x[:64], y[:64], x[64:], y[64:], num_classes=3, flip=False)
    cfg = absa.load_config(None, ["schedule.method=abs", "schedule.max_batch=64", "batch.size=16",
                                   "train.epochs=2", "hessian.probe_size=64", "schedule.duration=1",
                                   "train.device=cpu"])  # fmt: skip
    torch.manual_seed(0)
    res = absa.train(cfg, tmp_path / "run", model=TinyNet(), data=data, log=None)
    assert res.summary.epochs == 2 and res.summary.final_batch == 32
    assert [m["batch_size"] for m in res.metrics] == [16, 32] and res.metrics[0]["lambda_max"] > 0

    batch = (x[:32], y[:32])
    lam = absa.top_eigenvalues(res.model, [batch], k=2, block="last")
    head = res.model.classifier
    feats = res.model.features(x[:32]).detach()
    theta = torch.cat([head.weight.reshape(-1), head.bias]).detach()

    def loss(flat):
        w, b = flat[:48].view(3, 16), flat[48:]
        return nn.functional.cross_entropy(feats @ w.T + b, y[:32])

    dense = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, theta)).flip(0)
    assert lam == pytest.approx(dense[:2].tolist(), rel=1e-4, abs=1e-6)

    model, cfg2, _ = absa.load_run(res.run_dir, model=TinyNet())
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), res.model.state_dict().values(), strict=True)
    )
    rows = absa.evaluate(model, data.test, eps=[0.05], pgd_steps=2)
    assert [r["attack"] for r in rows] == ["clean", "fgsm", "pgd"] and rows[0]["n"] == 32


def test_width_set_for_a_fixed_width_model_is_noted():
    """absa train prints api.ignored_notes: model.width is named for a fixed-width model only."""
    from absa import api
    from absa.run import config as C
    from absa.run.models import FIXED_WIDTH

    fixed = sorted(FIXED_WIDTH)[0]
    notes = api.ignored_notes(C.load(None, [f"model.name={fixed}", "model.width=32"]))
    assert notes == [f"model.width is ignored by model.name {fixed} (its layer widths are fixed)"]
    assert api.ignored_notes(C.load(None, ["model.name=mlp", "model.width=32"])) == []
    assert api.ignored_notes(C.load(None, [f"model.name={fixed}"])) == []
