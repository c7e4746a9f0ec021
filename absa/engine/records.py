"""What a run reports: the live bar's and the loggers' step values (``step_hook``), one
metrics.jsonl record and console line per epoch, and the final ``Summary``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from absa.core.policies import Growth, spec_of
from absa.engine.epoch import EpochStats, StepHook
from absa.engine.evaluation import EvalResult
from absa.engine.loggers import MultiLogger
from absa.engine.probes import ProbeResult
from absa.engine.session import Session

STATS_EVERY = 16  # the live bar's loss/accuracy: read from the device every this many steps

# gradient-noise fields of a metrics line (absa.engine.probes.NoiseMeter.epoch_signals)
NOISE_FIELDS = ("noise_scale", "noise_snr", "noise_trace", "noise_g2", "ip_variance", "noise_steps")


@dataclass
class Summary:
    run_dir: str
    epochs: int
    updates: int
    final_batch: int
    test_loss: float
    test_acc: float
    best_test_acc: float
    train_seconds: float
    hessian_seconds: float
    eval_seconds: float
    growths: list[dict[str, Any]] = field(default_factory=list)
    robust: list[dict[str, Any]] = field(default_factory=list)  # adversarial.final_eval rows
    start_batch: int = 0  # batch.size, the first epoch's batch
    start_lr: float = 0.0  # optim.lr
    bl_updates: int = 0  # updates BL at start_batch would take for these epochs (one process)


def step_hook(
    bar: Callable[..., None] | None, logger: MultiLogger, done: int, every: int
) -> StepHook | None:
    """``on_step`` for train_epoch: the live bar, and the loggers' step scalars every
    ``every`` SGD updates (``done`` = updates before this epoch; None when neither wants it).
    Its ``wants_stats`` tells train_epoch at which steps the running loss is read from the
    device: the logged ones, and every STATS_EVERY steps for the bar."""
    if bar is None and not len(logger):
        return None

    def logs(step: int) -> bool:
        return bool(len(logger)) and (done + step) % every == 0

    def hook(step: int, n_steps: int, info: dict[str, Any]) -> None:
        if bar is not None:  # loss/acc None between reads: the bar keeps the last ones
            bar(step, n_steps, {**info, "updates": done + step})
        if logs(step):
            keys = ("lr", "batch_size", "adv_fraction", "step_loss", "loss", "acc")
            logger.log_step(done + step, {k: info[k] for k in keys})

    def wants_stats(step: int, n_steps: int) -> bool:
        """Read the device only for a logged step, and for the bar every STATS_EVERY steps
        and at the epoch's last step."""
        return logs(step) or (bar is not None and (step % STATS_EVERY == 0 or step == n_steps))

    hook.wants_stats = wants_stats  # type: ignore[attr-defined]
    return hook


def epoch_record(
    s: Session,
    epoch: int,
    plan: Any,
    tr: EpochStats,
    test: EvalResult,
    probe: ProbeResult | None,
    growth: Growth | None,
    times: dict[str, float],
    signals: dict[str, float | None],
) -> dict[str, Any]:
    """One metrics.jsonl line (0-based epoch)."""
    noise = {k: signals.get(k) for k in NOISE_FIELDS} if s.st.noise is not None else {}
    return {
        "epoch": epoch,
        "method": s.cfg.schedule.method,
        "updates": s.st.updates,
        "batch_size": plan.batch_size,
        "lr": plan.lr,
        "lr_end": s.optimizer.param_groups[0]["lr"],
        "adv_fraction": plan.adv_fraction,
        "samples": tr.samples,  # forward+backward passes of training (all ranks)
        "adv_samples": tr.adv_samples,
        "train_loss": tr.loss,
        "train_acc": tr.acc,
        "test_loss": test.loss,
        "test_acc": test.acc,
        "lambda_max": probe.eigenvalue if probe else None,
        "lambda_max_stderr": probe.stderr if probe else None,
        "hessian_hvps": probe.n_hvp if probe else 0,
        "probe_skipped": plan.probe and probe is None,
        # effective false: decided at the last epoch, so no epoch of this run trained at it
        # (it applies if the run is extended with --resume train.epochs=...)
        "growth": {**asdict(growth), "effective": epoch + 1 < s.cfg.train.epochs}
        if growth
        else None,
        # a growth a trigger asked for and a rule refused (hybrid's noise veto, stop_rule)
        "vetoed": epoch in getattr(s.policy, "vetoes", ()),
        "veto": veto_record(s.policy, epoch),
        **noise,
        "train_seconds": times["train"],
        "hessian_seconds": times["hessian"],
        "eval_seconds": times["eval"],
        "seconds": sum(times.values()),
    }


def veto_record(policy: Any, epoch: int) -> dict[str, Any] | None:
    """The policy's veto at the end of ``epoch`` (absa.core.policies.Veto as a dict), or None."""
    veto = getattr(policy, "last_veto", None)
    return asdict(veto) if veto is not None and veto.epoch == epoch else None


def _adversarial(method: str) -> bool:
    """Whether ``method`` trains on adversarial examples by default (its line shows "adv")."""
    return spec_of(method).default_adv_fraction > 0


def epoch_line(r: dict[str, Any], epochs: int) -> str:
    """The console line of an epoch's record."""
    lam = f" lambda_max {r['lambda_max']:.4g}" if r["lambda_max"] is not None else ""
    grow = ""
    if r["growth"]:
        g = r["growth"]
        late = "" if g.get("effective", True) else "; last epoch: not applied"
        grow = f" -> batch {g['new_batch']} ({g['trigger']}{late})"
    if r.get("veto"):
        v = r["veto"]
        grow = f" (growth to {v['new_batch']} on {v['trigger']} vetoed: {v['rule']})"
    adv = f" adv {r['adv_fraction']:.3g}" if r["adv_fraction"] or _adversarial(r["method"]) else ""
    return (
        f"epoch {r['epoch']}/{epochs - 1} {r['method']} batch {r['batch_size']} "
        f"lr {r['lr']:.4g}{adv} "
        f"updates {r['updates']} train {r['train_loss']:.4f}/{r['train_acc']:.2f}% "
        f"test {r['test_loss']:.4f}/{r['test_acc']:.2f}%{lam}{grow} "
        f"[{r['train_seconds']:.1f}s train, {r['hessian_seconds']:.1f}s hessian, "
        f"{r['eval_seconds']:.1f}s eval]"
    )


def summarize(s: Session, test: EvalResult, robust: list[dict[str, Any]]) -> Summary:
    """The run's summary.json content after its final evaluation ``test`` (and ``robust``)."""
    cfg, st = s.cfg, s.st
    return Summary(
        run_dir=str(s.run_dir),
        epochs=st.epoch,
        updates=st.updates,
        final_batch=s.policy.plan(max(st.epoch - 1, 0)).batch_size,
        test_loss=test.loss,
        test_acc=test.acc,
        best_test_acc=st.best_test_acc,
        train_seconds=s.totals["train"],
        hessian_seconds=s.totals["hessian"],
        eval_seconds=s.totals["eval"],
        growths=[g for g in st.growths if g["epoch"] + 1 < st.epoch],  # effective ones
        robust=robust,
        start_batch=cfg.batch.size,
        start_lr=cfg.optim.lr,
        bl_updates=st.epoch * math.ceil(len(s.data.train) / cfg.batch.size),
    )
