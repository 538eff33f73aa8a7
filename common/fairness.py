"""Fairness by group: what a site counts, what the coordinator computes from the counts, and the
site's one mitigation.

A site with a group column (a protected attribute, a ward, a region: never trained on) counts,
for its evaluation split, a confusion matrix per group (`group_confusions`). Groups with fewer
than `min_size` records are merged into "other", and "other" is left out when it is still
smaller: no count of fewer than `min_size` records leaves the site, and no group value per record
ever does. The coordinator sums the counts by group name over the sites and computes the metrics
with fairlearn's MetricFrame (`group_report`): per group accuracy, and per class (one against
the rest) selection rate, true positive rate and false positive rate; the gaps are the largest
differences between groups: equalized odds (TPR or FPR), demographic parity (selection rate), and
the worst group's accuracy. For two classes the gaps are fairlearn's own binary definitions.

The mitigation (`balancing_weights`) weights each training record by its (group, label) cell:
min(1, median cell size / its cell's size). Weights never exceed 1, and under DP-SGD they scale a
record's gradient after it is clipped (client/private_train.py), so no record moves the model by
more than the clipping bound and the privacy analysis is unchanged.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np

from common.config import SITE_FAIRNESS_OPTIONS, check_option
from common.errors import FedSiloError

MIN_GROUP_SIZE = 10  # fl-client --min-group-size default: the fewest records a reported count covers
OTHER = "other"  # where small groups go
MAX_GROUPS = 32  # groups one site reports, "other" included; the smallest named ones are merged first
_NAME = re.compile(r"[A-Za-z0-9_.\- ]{1,64}")  # a group value: nothing a terminal, Markdown or HTML reads


@dataclass(frozen=True)
class SiteFairness:
    """A site's own fairness settings (common/config.py SITE_FAIRNESS_OPTIONS)."""
    group_column: str = ""
    min_group_size: int = MIN_GROUP_SIZE
    fairness_reweight: bool = False

    @classmethod
    def from_mapping(cls, raw: dict, prefix: str = "") -> "SiteFairness":
        values = {opt.key.replace("-", "_"): check_option(opt, raw.get(prefix + opt.key, opt.default))
                  for opt in SITE_FAIRNESS_OPTIONS}
        settings = cls(**values)
        if settings.fairness_reweight and not settings.group_column:
            raise FedSiloError(f"{prefix}fairness-reweight needs {prefix}group-column (the groups to balance)")
        return settings


    def to_node_config(self) -> dict:
        return {opt.key: getattr(self, opt.key.replace("-", "_")) for opt in SITE_FAIRNESS_OPTIONS}

    def describe(self, groups: list[str] | None) -> str:
        """fl-client's start-up line (the site's own console)."""
        if not self.group_column:
            return "no group column (--group-column): no fairness report by group"
        return (f"{len(set(groups or ()))} groups in column {self.group_column!r}; evaluation counts are sent per "
                f"group of at least {self.min_group_size} records (smaller ones merged into {OTHER!r}), never "
                "a group per record; group-balanced reweighting " + ("ON" if self.fairness_reweight else "off"))


def add_fairness_options(parser) -> None:
    group = parser.add_argument_group("fairness (the site's own settings)")
    for opt in SITE_FAIRNESS_OPTIONS:
        flag, dest = f"--{opt.key}", opt.key.replace("-", "_")
        if opt.type is bool:
            group.add_argument(flag, dest=dest, action="store_true", help=f"{opt.help} [default: off]")
        else:
            group.add_argument(flag, dest=dest, type=opt.type, default=opt.default,
                               metavar="NAME" if opt.type is str else "N",
                               help=f"{opt.help} [default: {opt.default if opt.default != '' else 'none'}]")


def fairness_from_args(args) -> SiteFairness:
    return SiteFairness.from_mapping({opt.key: getattr(args, opt.key.replace("-", "_"))
                                      for opt in SITE_FAIRNESS_OPTIONS})


def valid_group_name(name) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and name.strip() == name


def merged_groups(groups: list[str], min_size: int) -> list[str | None]:
    """Each record's reported group: its own, OTHER when its group is small, None when it is not
    reported at all (OTHER still below min_size)."""
    counts = Counter(groups)
    keep = {g for g, n in counts.items() if n >= min_size}
    if len(keep) >= MAX_GROUPS:  # bounded reports: the largest groups keep their names
        keep = set(sorted(keep, key=lambda g: (-counts[g], g))[:MAX_GROUPS - 1])
    out = [g if g in keep else OTHER for g in groups]
    if sum(g == OTHER for g in out) < min_size and OTHER not in keep:
        out = [None if g == OTHER else g for g in out]
    return out


def group_confusions(labels: np.ndarray, preds: np.ndarray, groups: list[str], k: int,
                     min_size: int = MIN_GROUP_SIZE) -> dict[str, np.ndarray]:
    """{group: k x k confusion matrix (rows true, columns predicted)} over the reported groups."""
    reported = merged_groups(list(groups), min_size)
    out: dict[str, np.ndarray] = {}
    for name in sorted({g for g in reported if g is not None}):
        mask = np.array([g == name for g in reported])
        matrix = np.zeros((k, k), dtype=np.int64)
        np.add.at(matrix, (np.asarray(labels)[mask], np.asarray(preds)[mask]), 1)
        out[str(name)] = matrix
    return out


def add_confusions(into: dict[str, np.ndarray], more: dict[str, np.ndarray]) -> None:
    for name, matrix in more.items():
        into[name] = into[name] + matrix if name in into else matrix.copy()


def _expand(group_conf: dict[str, np.ndarray]):
    """The (true, predicted, group) rows a set of confusion matrices counts: what the predictions
    were, without which record made them."""
    true, pred, group = [], [], []
    for name, matrix in group_conf.items():
        t, p = np.nonzero(matrix)
        n = matrix[t, p]
        true.append(np.repeat(t, n))
        pred.append(np.repeat(p, n))
        group.append(np.repeat(np.array([name], dtype=object), int(n.sum())))
    return np.concatenate(true), np.concatenate(pred), np.concatenate(group)


def _one_vs_rest(metric, c: int):
    """fairlearn's binary metric for class c against the rest; NaN where it is undefined (a group
    with no record of class c has no true positive rate), so it never counts toward a gap."""
    from fairlearn.metrics import false_positive_rate, true_positive_rate

    def rate(y_true, y_pred):
        positive = np.asarray(y_true) == c
        if metric == "tpr":
            return true_positive_rate(positive, np.asarray(y_pred) == c, pos_label=True) if positive.any() else np.nan
        return false_positive_rate(positive, np.asarray(y_pred) == c, pos_label=True) if (~positive).any() else np.nan
    return rate


def group_report(group_conf: dict[str, np.ndarray], labels: tuple[str, ...]) -> dict | None:
    """Per-group metrics and the gaps between groups (module docstring); None without groups."""
    group_conf = {g: np.asarray(m) for g, m in group_conf.items() if np.asarray(m).sum() > 0}
    if not group_conf:
        return None
    from fairlearn.metrics import MetricFrame, count, selection_rate
    from sklearn.metrics import accuracy_score

    y_true, y_pred, group = _expand(group_conf)
    metrics = {"accuracy": accuracy_score, "records": count}
    for c, name in enumerate(labels):
        metrics[f"selection_rate/{name}"] = (lambda t, p, c=c: selection_rate(t, p, pos_label=c))
        metrics[f"tpr/{name}"] = _one_vs_rest("tpr", c)
        metrics[f"fpr/{name}"] = _one_vs_rest("fpr", c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fairlearn warns about groups with one class present
        frame = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=group)
        gaps = frame.difference(method="between_groups")
    by_group = {str(g): {m: _num(v) for m, v in row.items()} for g, row in frame.by_group.iterrows()}
    eo = max((_num(gaps[f"{kind}/{name}"]) for name in labels for kind in ("tpr", "fpr")), key=_nan_low)
    dp = max((_num(gaps[f"selection_rate/{name}"]) for name in labels), key=_nan_low)
    worst = min(by_group, key=lambda g: (by_group[g]["accuracy"], g))
    return {"groups": by_group,
            "gaps": {"equalized_odds_difference": eo, "demographic_parity_difference": dp,
                     "accuracy_difference": _num(gaps["accuracy"]),
                     "worst_group_accuracy": by_group[worst]["accuracy"], "worst_group": worst}}


def _num(value) -> float:
    value = float(value)
    return value if np.isfinite(value) else float("nan")


def _nan_low(value: float) -> float:
    return -1.0 if np.isnan(value) else value


def largest_gap(report: dict | None) -> tuple[str, float] | None:
    """The larger of the equalized-odds and demographic-parity differences, with its name."""
    if not report:
        return None
    gaps = report["gaps"]
    pairs = [(n, gaps[k]) for n, k in (("equalized-odds", "equalized_odds_difference"),
                                       ("demographic-parity", "demographic_parity_difference"))
             if np.isfinite(gaps[k])]
    return max(pairs, key=lambda p: p[1]) if pairs else None


def balancing_weights(labels: np.ndarray, groups: list[str]) -> np.ndarray:
    """Per-record training weights in (0, 1]: min(1, median cell size / the record's cell size),
    cells being (group, label). Large cells are weighted down, none up (module docstring)."""
    cells = list(zip(groups, np.asarray(labels).tolist()))
    sizes = Counter(cells)
    median = float(np.median(list(sizes.values())))
    return np.array([min(1.0, median / sizes[c]) for c in cells], dtype=np.float64)
