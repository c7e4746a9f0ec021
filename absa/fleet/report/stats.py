"""Statistics of a sweep's runs: per-run costs, and ``table``, the runs grouped into rows.

``table`` groups the runs the way the paper's tables are laid out: one row per (batch size
B, method column) with the final-epoch test accuracy as mean and sample std (n-1) over
seeds, the mean number of SGD updates and the final batch size. When runs of the same
method and batch size differ in some other config key (say ``adversarial.eps``), that key
becomes part of the column (``ABSA (eps=0.01)``); a key missing from an older run's
config.yaml counts as its default.

Each row also gets its cost and robustness: SGD updates to first reach the target accuracy
(the best fixed-batch BL at the smallest batch, final accuracy minus ``TARGET_MARGIN``
points; per run from metrics.jsonl) and the training wall seconds until then
(``train_seconds`` + ``hessian_seconds`` of those epochs; evaluation excluded), samples
processed (forward+backward passes: training samples plus adversarial samples times the
attack's gradient steps), Hessian-vector products, the Hessian's share of the training
time, wall time, and clean/FGSM/PGD accuracy per epsilon where summary.json has ``robust``
rows.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from typing import Any

from absa.core.policies import METHODS
from absa.fleet.report.read import RunRecord, method_name
from absa.run.config import Config, to_dict

TARGET_METHOD = "bl"  # the target accuracy is this method's at its smallest batch ...
TARGET_MARGIN = 1.0  # ... minus this many points
# gradient computations per adversarial sample (crafting); pgd: adversarial.pgd_steps
ATTACK_COST = {"fgsm": 1, "fast_fgsm": 1}
# config keys that do not make two runs different experiments
_IGNORED = {
    "train.seed",
    "train.run_name",
    "train.out_dir",
    "train.device",
    "train.threads",
    "train.eval_batch",
    "batch.max_micro_batch",
    "data.root",
    "data.download",
    "data.num_workers",
    "schedule.eigenvalue_trigger",  # in the column's name ("duration only")
    "schedule.replay_from",  # in the column's name ("replay of ...")
}
_IGNORED_SECTIONS = ("distributed.", "log.")  # log.*: where metrics are also sent
_SHORT = {"adversarial.eps": "eps", "adversarial.fraction": "r", "batch.size": "B"}
_ATTACK_ORDER = ("clean", "fgsm", "fast_fgsm", "pgd")


# --- per-run costs --------------------------------------------------------------------------


def _sum_metric(r: RunRecord, key: str) -> float | None:
    """The sum of a metrics field over the run's epochs (None if no epoch logged it)."""
    values = [m[key] for m in r.metrics if m.get(key) is not None]
    return float(sum(values)) if values else None


def attack_cost(cfg: dict[str, Any]) -> int:
    """Gradient computations to craft one adversarial training example."""
    adv = cfg.get("adversarial", {})
    method = str(adv.get("method", "fgsm"))
    if method == "pgd":
        return int(adv.get("pgd_steps") or 10)
    return ATTACK_COST.get(method, 1)


def samples_processed(r: RunRecord) -> float | None:
    """Forward+backward passes of the run: training samples plus adversarial samples times
    the attack's gradient steps (None for runs whose metrics lack ``samples``)."""
    samples = _sum_metric(r, "samples")
    if samples is None:
        return None
    return samples + (_sum_metric(r, "adv_samples") or 0.0) * attack_cost(r.config)


def hessian_share(r: RunRecord) -> float | None:
    """Hessian probe time / training time (None without training time)."""
    return r.hessian_seconds / r.train_seconds if r.train_seconds > 0 else None


# what made a batch grow, as counted in the report (summary.json's Growth.trigger, folded)
TRIGGERS = ("eigenvalue", "noise", "duration", "schedule")


def growth_triggers(r: RunRecord) -> dict[str, int]:
    """Growths of one run by trigger, plus ``vetoed``: growths a trigger asked for and a rule
    refused (metrics.jsonl 'veto').

    Adaptive policies record each growth with its trigger in summary.json ("eigenvalue" and
    "eigenvalue_confident" count as eigenvalue); a batch increase between epochs that no
    recorded growth explains (GG, Seesaw: a fixed schedule) counts as "schedule".
    """
    counts = dict.fromkeys(TRIGGERS, 0)
    for g in r.growths:
        trigger = str(g.get("trigger", ""))
        trigger = "eigenvalue" if trigger.startswith("eigenvalue") else trigger
        counts[trigger] = counts.get(trigger, 0) + 1
    batches = [m["batch_size"] for m in r.metrics if isinstance(m.get("batch_size"), int)]
    increases = sum(b > a for a, b in zip(batches, batches[1:], strict=False))
    counts["schedule"] += max(0, increases - len(r.growths))
    counts["vetoed"] = sum(1 for m in r.metrics if m.get("veto"))
    return counts


def wall_seconds(r: RunRecord) -> float:
    return r.train_seconds + r.hessian_seconds + r.eval_seconds


def updates_to_reach(r: RunRecord, target: float | None) -> int | None:
    """SGD updates at the end of the first epoch whose test accuracy is >= ``target``."""
    if target is None:
        return None
    for m in sorted(r.metrics, key=lambda m: m.get("epoch", 0)):
        if m.get("test_acc") is not None and m["test_acc"] >= target and m.get("updates"):
            return int(m["updates"])
    return None


def seconds_to_reach(r: RunRecord, target: float | None) -> float | None:
    """Training wall seconds until the test accuracy first reaches ``target``: the
    ``train_seconds`` + ``hessian_seconds`` of every epoch up to and including that one
    (evaluation excluded, as the probe is part of training and evaluation is not). None when
    it is never reached or an epoch up to it lacks ``train_seconds`` (older metrics)."""
    if target is None:
        return None
    total = 0.0
    for m in sorted(r.metrics, key=lambda m: m.get("epoch", 0)):
        if m.get("train_seconds") is None:
            return None
        total += float(m["train_seconds"]) + float(m.get("hessian_seconds") or 0.0)
        if m.get("test_acc") is not None and m["test_acc"] >= target and m.get("updates"):
            return total
    return None


def _robust_key(row: dict[str, Any]) -> str:
    attack = str(row.get("attack", "?"))
    return "clean" if attack == "clean" else f"{attack} {float(row.get('eps', 0.0)):g}"


def _robust_order(key: str) -> tuple[int, str, float]:
    attack, _, eps = key.partition(" ")
    rank = _ATTACK_ORDER.index(attack) if attack in _ATTACK_ORDER else len(_ATTACK_ORDER)
    return rank, attack, float(eps or 0.0)


def robust_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The robust accuracy columns present: ``clean``, ``fgsm 0.01``, ``pgd 0.01``, ..."""
    return sorted({k for r in rows for k in r.get("robust", {})}, key=_robust_order)


# --- the table ----------------------------------------------------------------------------


_DEFAULTS: dict[str, str] | None = None


def _defaults() -> dict[str, str]:
    """The flat default config: the value of a key an older run's config.yaml lacks."""
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = _flat(to_dict(Config()))
    return _DEFAULTS


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True, default=str)
    return out


def _full_flat(r: RunRecord) -> dict[str, Any]:
    return {**_defaults(), **_flat(r.config)}


def variant_keys(records: list[RunRecord]) -> dict[str, list[str]]:
    """Per method label: config keys that differ between runs of one (batch size, label)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r.batch_size, r.label), []).append(_full_flat(r))
    keys: dict[str, list[str]] = {r.label: [] for r in records}
    for (_batch, label), flats in groups.items():
        for k in sorted(set().union(*flats)):
            if k in _IGNORED or k.startswith(_IGNORED_SECTIONS) or k in keys[label]:
                continue
            if len({f.get(k) for f in flats}) > 1:
                keys[label].append(k)
    return keys


def variant_of(record: RunRecord, keys: list[str]) -> str:
    """``eps=0.01``: the run's values of the keys that vary within its column group. With
    several such keys only those off their default are named (``lr_scaling=sqrt``, not
    ``growth_warmup=0, lr_guard=False, lr_scaling=sqrt``; all at their defaults: ""), which
    still tells every group apart, since the named keys fix the others at their defaults."""
    flat = _full_flat(record)
    if len(keys) > 1:
        keys = [k for k in keys if flat.get(k) != _defaults().get(k)]
    parts = []
    for k in keys:
        v = json.loads(flat[k]) if k in flat else None
        if isinstance(v, float) and v.is_integer():
            v = int(v)  # warmup_epochs=2, not 2.0
        parts.append(f"{_SHORT.get(k, k.split('.')[-1])}={'none' if v is None else v}")
    return ", ".join(parts)


def method_order(method: str) -> int:
    order = list(METHODS)  # registration order
    return order.index(method) if method in order else len(order)


def column_label(method: str, variant: str = "") -> str:
    """``ABSA``, ``ABSA (eps=0.01)``; ``method`` may be a label (``replay of ABSA``)."""
    name = method if method != method.lower() or " " in method else method_name(method)
    return name + (f" ({variant})" if variant else "")


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def reference_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row the target comes from: the best BL group at BL's smallest batch."""
    bl = [r for r in rows if r["method"] == TARGET_METHOD and not r["ablation"]]
    if not bl:
        return None
    small = min(r["batch"] for r in bl)
    return max((r for r in bl if r["batch"] == small), key=lambda r: r["acc_mean"])


def target_accuracy(rows: list[dict[str, Any]]) -> tuple[float | None, str]:
    """(target, how): the best BL group at BL's smallest batch, final accuracy minus
    TARGET_MARGIN points; (None, why) without BL runs."""
    best = reference_row(rows)
    if best is None:
        return None, f"no {method_name(TARGET_METHOD)} run, so no target accuracy"
    target = best["acc_mean"] - TARGET_MARGIN
    return target, (
        f"target {target:.2f}% = {best['column']} at B = {best['batch']} "
        f"({best['acc_mean']:.2f}%) - {TARGET_MARGIN:g} pt"
    )


def _groups(records: list[RunRecord]) -> list[tuple[tuple[int, str, str], list[RunRecord]]]:
    """The runs per (row batch, method label, variant), in table order."""
    keys = variant_keys(records)
    groups: dict[tuple[int, str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.batch_size, r.label, variant_of(r, keys[r.label])), []).append(r)

    def order(kv: Any) -> tuple[Any, ...]:
        (batch, label, variant), rs = kv
        method = rs[0].method
        return batch, method_order(method), rs[0].ablation, method, label, variant

    return sorted(groups.items(), key=order)


def _trigger_means(rs: list[RunRecord]) -> dict[str, float]:
    """Mean growths per run by trigger (``growths_<trigger>_mean``), in all and vetoed."""
    tallies = [growth_triggers(r) for r in rs]
    keys = [*TRIGGERS, *sorted({k for t in tallies for k in t} - {*TRIGGERS, "vetoed"})]
    out = {f"growths_{k}_mean": statistics.fmean(t.get(k, 0) for t in tallies) for k in keys}
    out["growths_mean"] = sum(out.values())
    out["vetoed_mean"] = statistics.fmean(t["vetoed"] for t in tallies)
    return out


def _group_row(batch: int, label: str, variant: str, rs: list[RunRecord]) -> dict[str, Any]:
    """A row's statistics over its runs ``rs`` (sorted by seed); ``_records`` keeps them."""
    accs = [r.test_acc for r in rs]
    best = [r.best_test_acc for r in rs]
    finals = [r.final_batch for r in rs]
    robust: dict[str, list[float]] = {}
    for r in rs:
        for row in r.robust:
            robust.setdefault(_robust_key(row), []).append(float(row["acc"]))
    return {
        "batch": batch,
        "method": rs[0].method,
        "label": label,
        "ablation": rs[0].ablation,
        "variant": variant,
        "column": column_label(label, variant),
        "n_seeds": len(rs),
        "seeds": [r.seed for r in rs],
        "acc_mean": statistics.fmean(accs),
        "acc_std": _std(accs),
        "best_acc_mean": statistics.fmean(best),
        "best_acc_std": _std(best),
        "updates_mean": statistics.fmean(r.updates for r in rs),
        "final_batch": max(finals),
        "final_batch_min": min(finals),
        "epochs": max(r.epochs for r in rs),
        "test_loss_mean": statistics.fmean(r.test_loss for r in rs),
        "train_seconds_mean": statistics.fmean(r.train_seconds for r in rs),
        "hessian_seconds_mean": statistics.fmean(r.hessian_seconds for r in rs),
        "wall_seconds_mean": statistics.fmean(wall_seconds(r) for r in rs),
        "hessian_share_mean": _mean(hessian_share(r) for r in rs),
        "hvps_mean": _mean(_sum_metric(r, "hessian_hvps") for r in rs),
        "samples_processed_mean": _mean(samples_processed(r) for r in rs),
        **_trigger_means(rs),
        "robust": {k: statistics.fmean(v) for k, v in robust.items()},
        "robust_n": {k: len(v) for k, v in robust.items()},
        "runs": [r.name for r in rs],
        "_records": rs,
    }


def _add_targets(rows: list[dict[str, Any]]) -> None:
    """Per row, updates and seconds to the target accuracy (and drop ``_records``)."""
    target, _ = target_accuracy(rows)
    for row in rows:
        records = row.pop("_records")
        reached = [updates_to_reach(r, target) for r in records]
        hit = [u for u in reached if u is not None]
        secs = [s for s in (seconds_to_reach(r, target) for r in records) if s is not None]
        row["target_acc"] = target
        row["target_reached"] = len(hit)
        row["updates_to_target_mean"] = statistics.fmean(hit) if hit else None
        row["seconds_to_target_n"] = len(secs)
        row["seconds_to_target_mean"] = statistics.fmean(secs) if secs else None


def table(records: Iterable[RunRecord]) -> list[dict[str, Any]]:
    """One row per (row batch, method label[, variant]) group, sorted by batch then method."""
    rows = [
        _group_row(batch, label, variant, sorted(rs, key=lambda r: (r.seed, r.name)))
        for (batch, label, variant), rs in _groups(list(records))
    ]
    _add_targets(rows)
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The method columns of the rows, in table order."""
    seen: dict[str, tuple[Any, ...]] = {}
    for r in rows:
        seen.setdefault(
            r["column"],
            (method_order(r["method"]), r["ablation"], r["method"], r["label"], r["variant"]),
        )
    return sorted(seen, key=lambda c: seen[c])


def run_columns(records: list[RunRecord]) -> tuple[dict[str, str], list[str]]:
    """Each run's column (method label + variant) and the columns in table order."""
    keys = variant_keys(records)
    col_of = {r.name: column_label(r.label, variant_of(r, keys[r.label])) for r in records}
    order: dict[str, tuple[Any, ...]] = {}
    for r in records:
        order.setdefault(col_of[r.name], (method_order(r.method), r.ablation, r.method, r.label))
    return col_of, sorted(order, key=lambda c: (order[c], c))
