"""What a site reports, checked before the coordinator uses any of it.

A site's fit and evaluate replies carry metrics next to the update: its name, record counts,
PII redaction counts, its privacy accounting and a confusion matrix (FIT_FIELDS / EVAL_FIELDS).
All of it is the site's word, and a hostile or broken site can send anything the wire format
allows: strings where numbers belong, inf, NaN, negative or huge counts, unknown fields, a
"confusion matrix" nested 100,000 lists deep. Everything is checked here for type, shape and
range; a reply that fails is a malformed report (`Malformed`: which field, and a short reason
that never echoes the site's text), and the strategy leaves the site out of the round.

Site text that is shown at all (failure reasons) is escaped and bounded by `site_text`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

import numpy as np

from common.errors import printable
from common.fairness import MAX_GROUPS, valid_group_name
from common.privacy import ACCOUNTANT_NAMES, MECHANISM_NAMES
from common.redaction import ENTITY_TYPES

FIT_FIELDS = frozenset({"site", "records", "eval_records", "redactions", "dp", "epsilon", "delta", "budget",
                        "accountant", "noise_multiplier", "sample_rate", "steps", "mechanisms", "train_loss",
                        "time_load", "time_tokenise", "time_train", "device", "peak_rss_mib", "gpu_peak_mib",
                        "ray_node"})
EVAL_FIELDS = frozenset({"site", "confusion", "group_confusion", "entity_counts", "time_load", "time_tokenise",
                         "time_evaluate"})
# What the coordinator keeps of each site's last fit report (state.json, the summary, the card).
PRIVACY_KEYS = ("dp", "epsilon", "delta", "budget", "accountant", "records", "eval_records", "redactions",
                "mechanisms")
DP_REQUIRED = ("epsilon", "delta", "accountant", "records")  # what a DP guarantee sentence needs

MAX_RECORDS = 10**9  # records, held-out records, examples, each count of a confusion matrix
MAX_REDACTIONS = 10**12  # placeholders of one type
MAX_STEPS = 10**9
MAX_EPSILON = 1e6
MAX_SECONDS = 1e7
MAX_MIB = 1e9  # a site's peak memory, CPU or GPU
DEVICE_KINDS = ("cpu", "cuda")  # the kind only: which GPU a site has is its own business
MAX_TEXT = 300  # a site's failure reason, as shown in the round line and metrics.jsonl
MAX_REDACTIONS_CHARS = 1024
_RAY_NODE = re.compile(r"[0-9a-f]{8,64}")  # the Ray node that served a virtual site (simulation)
_NAME_CHARS = 64  # as fl-server enrols site names (server/federation.py)


class Malformed(ValueError):
    """A report the coordinator does not use: `field` and a short reason of our own words."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def site_text(text, limit: int = MAX_TEXT) -> str:
    """A site's free text for a line of the terminal, the log or metrics.jsonl: control
    characters (ESC, newlines, OSC sequences) escaped, at most `limit` characters."""
    return printable(str(text), limit)


def valid_site_name(name) -> bool:
    """A name a site may give itself: 1-64 letters, digits, '-' or '_' (what fl-client
    --insecure and enrolment allow): nothing a terminal, Markdown or HTML reads as markup."""
    return (isinstance(name, str) and 0 < len(name) <= _NAME_CHARS
            and all(c.isalnum() or c in "-_" for c in name))


def claimed(metrics) -> dict:
    """{"site": name} when a reply carries a valid name for itself, else {}."""
    name = metrics.get("site") if isinstance(metrics, Mapping) else None
    return {"site": name} if valid_site_name(name) else {}


def failure_text(failure) -> str:
    """The reason a site (or Flower, for it) gives for a failed reply, escaped and bounded."""
    try:
        if isinstance(failure, BaseException):
            error = failure.args[0] if failure.args else None
            text = getattr(error, "reason", None) or str(failure) or type(failure).__name__
        else:
            _proxy, res = failure
            text = res.status.message
    except Exception:  # noqa: BLE001 - whatever it is, the round goes on
        text = "a site failed (no readable reason)"
    return site_text(text)


# ------------------------------------------------------------------------- single fields
def _field_name(key) -> str:
    """A field name fit to quote in a reason: a site's unknown key only if it is a plain word."""
    return key if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_]{1,32}", key) else "(unprintable name)"


def _int(value, field: str, low: int, high: int) -> int:
    if type(value) is not int:  # bool is an int subclass, numpy ints never come over the wire
        raise Malformed(field, "not a whole number")
    if not low <= value <= high:
        raise Malformed(field, f"outside {low}..{high:g}")
    return value


def _number(value, field: str, low: float, high: float, nan_ok: bool = False) -> float:
    if type(value) not in (int, float):
        raise Malformed(field, "not a number")
    try:
        number = float(value)
    except OverflowError:
        raise Malformed(field, "not a finite number") from None
    if math.isnan(number) and nan_ok:
        return number
    if not math.isfinite(number):
        raise Malformed(field, "not a finite number")
    if not low <= number <= high:
        raise Malformed(field, f"outside {low:g}..{high:g}")
    return number


def _bool(value, field: str) -> bool:
    if type(value) is not bool:
        raise Malformed(field, "not true or false")
    return value


def _json(text, field: str, max_chars: int, max_depth: int, allowed: str | None = None):
    """json.loads of `text`, refused before parsing if too long, too deep or (with `allowed`, a
    regular-expression character class) holding other characters: no recursion limit is hit."""
    if not isinstance(text, str):
        raise Malformed(field, "not a JSON string")
    if len(text) > max_chars:
        raise Malformed(field, f"longer than {max_chars} characters")
    if allowed and not re.fullmatch(f"[{allowed}]*", text):
        raise Malformed(field, "holds characters other than digits, brackets and commas")
    depth, in_string, escaped = 0, False, False
    for c in text:  # brackets outside JSON strings
        if in_string:
            in_string, escaped = (escaped or c != '"'), (not escaped and c == "\\")
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > max_depth:
                raise Malformed(field, f"nested more than {max_depth} deep")
        elif c in "]}":
            depth -= 1
    try:
        return json.loads(text, parse_constant=lambda _name: None)
    except (ValueError, RecursionError):
        raise Malformed(field, "not valid JSON") from None


def redaction_counts(text) -> dict[str, int]:
    """The redaction counts a site reports: a JSON object of known PII types to counts."""
    counts = _json(text, "redactions", MAX_REDACTIONS_CHARS, 1)
    if not isinstance(counts, dict):
        raise Malformed("redactions", "not a JSON object of counts")
    for key, value in counts.items():
        if key not in ENTITY_TYPES:
            raise Malformed("redactions", "unknown PII type")
        _int(value, "redactions", 0, MAX_REDACTIONS)
    return counts


def mechanism_shares(text) -> str:
    """The epsilon each mechanism of the site's run would cost alone: a JSON object of known
    mechanism keys (common/privacy.py MECHANISM_KEYS) to numbers; returned in canonical form."""
    shares = _json(text, "mechanisms", 200, 1)
    if not isinstance(shares, dict) or not shares:
        raise Malformed("mechanisms", "not a JSON object of epsilons")
    for key, value in shares.items():
        if key not in MECHANISM_NAMES:
            raise Malformed("mechanisms", "unknown mechanism")
        _number(value, "mechanisms", 0.0, MAX_EPSILON)
    return json.dumps(shares, sort_keys=True)


def confusion_matrix(text, k: int) -> np.ndarray:
    """A site's confusion matrix: JSON, k lists of k whole counts, each at most MAX_RECORDS."""
    longest = 2 + k * (2 + k * (len(str(MAX_RECORDS)) + 2))  # '[' + k * '[n, n, ...], ' + ']'
    rows = _json(text, "confusion", 64 + 2 * longest, 2, allowed=r"0-9\[\], \t\r\n")
    if not isinstance(rows, list) or len(rows) != k or not all(isinstance(r, list) and len(r) == k for r in rows):
        raise Malformed("confusion", f"not {k} rows of {k} counts")
    for row in rows:
        for value in row:
            _int(value, "confusion", 0, MAX_RECORDS)
    return np.asarray(rows, dtype=np.int64).reshape(k, k)


def group_confusions(text, k: int, confusion: np.ndarray) -> dict[str, np.ndarray]:
    """A site's confusion matrices by group: a JSON object of at most MAX_GROUPS plain group names
    to k x k counts, which together count no more than the site's whole matrix does, cell by cell."""
    one = 2 + k * (2 + k * (len(str(MAX_RECORDS)) + 2))
    groups = _json(text, "group_confusion", MAX_GROUPS * (one + 72), 3)
    if not isinstance(groups, dict) or len(groups) > MAX_GROUPS:
        raise Malformed("group_confusion", f"not a JSON object of at most {MAX_GROUPS} groups")
    out, total = {}, np.zeros((k, k), dtype=np.int64)
    for name, rows in groups.items():
        if not valid_group_name(name):
            raise Malformed("group_confusion", "a group name that is not a plain name")
        out[name] = confusion_matrix(json.dumps(rows), k)
        total += out[name]
    if (total > confusion).any():
        raise Malformed("group_confusion", "the groups count more records than the site's confusion matrix")
    return out


def entity_counts(text, types: tuple[str, ...], words: int) -> dict[str, dict[str, int]]:
    """A site's NER entity counts (common/ner_report.py): a JSON object of the run's entity types
    to {"tp", "pred", "true"} whole counts, with tp <= pred, tp <= true and, since every entity
    spans a word at least, no more entities found or true than the words the site evaluated."""
    counts = _json(text, "entity_counts", 128 * len(types) + 64, 2)
    if not isinstance(counts, dict) or not set(counts) <= set(types):
        raise Malformed("entity_counts", "not a JSON object keyed by the run's entity types")
    out = {}
    for kind, c in counts.items():
        if not isinstance(c, dict) or set(c) != {"tp", "pred", "true"}:
            raise Malformed("entity_counts", "each type needs exactly tp, pred and true")
        out[kind] = {key: _int(c[key], "entity_counts", 0, MAX_RECORDS) for key in ("tp", "pred", "true")}
        if out[kind]["tp"] > min(out[kind]["pred"], out[kind]["true"]):
            raise Malformed("entity_counts", "more entities found right than found, or than there are")
    if any(sum(c[key] for c in out.values()) > words for key in ("pred", "true")):
        raise Malformed("entity_counts", f"more entities than the {words} words evaluated")
    return out


# ----------------------------------------------------------------------------- reports
_CHECKS = {
    "records": lambda v, f: _int(v, f, 0, MAX_RECORDS),
    "eval_records": lambda v, f: _int(v, f, 0, MAX_RECORDS),
    "redactions": lambda v, f: json.dumps(redaction_counts(v), sort_keys=True),  # canonical again
    "dp": _bool,
    "epsilon": lambda v, f: _number(v, f, 0.0, MAX_EPSILON),
    "delta": lambda v, f: _number(v, f, 0.0, 1.0),
    "budget": lambda v, f: _number(v, f, 0.0, MAX_EPSILON),
    "accountant": lambda v, f: v if isinstance(v, str) and v in ACCOUNTANT_NAMES else _bad(
        f, f"not one of {', '.join(sorted(ACCOUNTANT_NAMES))}"),
    "noise_multiplier": lambda v, f: _number(v, f, 0.0, 1e6),
    "sample_rate": lambda v, f: _number(v, f, 0.0, 1.0),
    "steps": lambda v, f: _int(v, f, 0, MAX_STEPS),
    "mechanisms": lambda v, f: mechanism_shares(v),
    "train_loss": lambda v, f: _number(v, f, -1e9, 1e9, nan_ok=True),  # NaN: no batch was trained
    "device": lambda v, f: v if v in DEVICE_KINDS else _bad(f, f"not one of {', '.join(DEVICE_KINDS)}"),
    "peak_rss_mib": lambda v, f: _number(v, f, 0.0, MAX_MIB),
    "gpu_peak_mib": lambda v, f: _number(v, f, 0.0, MAX_MIB),
    "ray_node": lambda v, f: v if isinstance(v, str) and _RAY_NODE.fullmatch(v) else _bad(f, "not a Ray node id"),
    "site": lambda v, f: v if valid_site_name(v) else _bad(f, "not 1-64 letters, digits, '-' or '_'"),
}


def _bad(field: str, reason: str):
    raise Malformed(field, reason)


def _checked(metrics, allowed: frozenset | tuple, skip: tuple = ()) -> dict:
    """Every field of `metrics` is one of `allowed` and passes its check (those in `skip` are
    the caller's to check)."""
    if not isinstance(metrics, Mapping):  # Flower hands over a ConfigRecord
        raise Malformed("metrics", "not a mapping")
    clean = {}
    for key, value in metrics.items():
        if key not in allowed:
            raise Malformed(_field_name(key), "unknown field")
        if key.startswith("time_"):
            clean[key] = _number(value, key, 0.0, MAX_SECONDS)
        elif key not in skip:
            clean[key] = _CHECKS[key](value, key)
    return clean


def _check_fields(metrics, allowed: frozenset | tuple) -> dict:
    """Every field of `metrics` checked; a DP report has what its guarantee sentence needs."""
    clean = _checked(metrics, allowed)
    if "dp" not in clean:
        raise Malformed("dp", "missing (every report says whether it was trained with DP)")
    if clean["dp"]:
        for key in DP_REQUIRED:
            if key not in clean:
                raise Malformed(key, "missing (dp is true)")
        if clean["delta"] <= 0.0 or clean["delta"] >= 1.0:
            raise Malformed("delta", "not strictly between 0 and 1")
    return clean


def fit_report(metrics, num_examples) -> dict:
    """The checked metrics of a fit reply (raises Malformed)."""
    _int(num_examples, "num_examples", 1, MAX_RECORDS)
    return _check_fields(metrics, FIT_FIELDS)


def evaluate_report(metrics, num_examples, loss, k: int, entity_types: tuple[str, ...] = ()
                    ) -> tuple[dict, np.ndarray | None]:
    """The checked metrics of an evaluate reply and its k x k confusion matrix (None when the
    site holds out no records); raises Malformed. entity_types: a NER run's (its replies count
    words, and entities by type); a classification run takes no entity counts."""
    _int(num_examples, "num_examples", 0, MAX_RECORDS)
    _number(loss, "loss", -1e9, 1e9, nan_ok=True)
    clean = _checked(metrics, EVAL_FIELDS, skip=("confusion", "group_confusion", "entity_counts"))  # parsed below
    if "confusion" not in metrics:
        if num_examples:
            raise Malformed("confusion", f"missing for {num_examples} evaluated records")
        if "group_confusion" in metrics:
            raise Malformed("group_confusion", "counts by group without a confusion matrix")
        return clean, None
    confusion = confusion_matrix(metrics["confusion"], k)
    if int(confusion.sum()) != num_examples:
        raise Malformed("confusion", f"counts {int(confusion.sum())} records, the reply says {num_examples}")
    if "group_confusion" in metrics:  # dict of group -> matrix, for server/fairness_round.py
        clean["group_confusion"] = group_confusions(metrics["group_confusion"], k, confusion)
    if ("entity_counts" in metrics) != bool(entity_types):
        raise Malformed("entity_counts", "missing in a NER run" if entity_types else "sent in a classification run")
    if entity_types:  # for server/entity_round.py
        clean["entity_counts"] = entity_counts(metrics["entity_counts"], entity_types, num_examples)
    return clean, confusion


def privacy_entry(clean: dict) -> dict:
    """What the coordinator keeps of a checked fit report."""
    return {k: clean[k] for k in PRIVACY_KEYS if k in clean}


def resumed_privacy(saved) -> tuple[dict[str, dict], list[str]]:
    """The site_privacy of a checkpoint (state.json), each entry checked as a fresh report is
    (a checkpoint of an older version may hold anything); (valid entries, what was dropped)."""
    if not isinstance(saved, dict):
        return {}, ["site_privacy is not a mapping: every entry dropped"]
    kept, dropped = {}, []
    for name, entry in saved.items():
        shown = site_text(name, 80)
        if not (isinstance(name, str) and 0 < len(name) <= 100
                and all(c.isalnum() or c in " -_()." for c in name)):
            dropped.append(f"site privacy report under the name {shown!r} dropped (not a site name)")
            continue
        try:
            kept[name] = privacy_entry(_check_fields(entry, PRIVACY_KEYS))
        except Malformed as bad:
            dropped.append(f"site privacy report of {shown} dropped (malformed: {bad})")
    return kept, dropped


# ------------------------------------------------------------------- replies Flower reads
def unreadable_reply(reply, instruction=None, secure: bool = False) -> str | None:
    """Why Flower's compat layer would raise on a site's train/evaluate reply (and the
    ServerApp with it: a list-valued metric, a missing record, a float example count), or
    None. Train replies must read as a FitRes without secure aggregation and in SecAgg+'s
    last stage; any reply that carries fitres / evaluateres records must read as one."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app.message_type import MessageType
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    try:
        if reply.has_error() or not reply.has_content():
            return None
        content, kind = reply.content, reply.metadata.message_type
        names = [*content.config_records, *content.metric_records, *content.array_records]
        stage = None
        if instruction is not None and instruction.has_content():
            stage = instruction.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)
        fit_needed = kind == MessageType.TRAIN and (not secure or stage == Stage.COLLECT_MASKED_VECTORS)
        checks = (("fitres", lambda c: compat.recorddict_to_fitres(c, keep_input=True), fit_needed),
                  ("evaluateres", compat.recorddict_to_evaluateres, kind == MessageType.EVALUATE))
        for prefix, convert, needed in checks:
            if needed or any(name.startswith(prefix + ".") for name in names):
                res = convert(content)
                if type(res.num_examples) is not int:
                    return f"{prefix}.num_examples: not a whole number"
    except Exception as err:  # noqa: BLE001 - exactly what Flower would raise on
        return f"unreadable by Flower ({type(err).__name__})"
    return None
