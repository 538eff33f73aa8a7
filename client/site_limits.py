"""What a site lets a run ask of it: the site's own caps on what the server controls.

The server picks a run's settings (how many rounds, and so how much noise each round gets; the
epochs, batch size, text length and label set that cost the site time and memory; the base model
the site loads from its disk) and sends every fit. The site's operator sets with fl-client how far
they may go (they reach the ClientApp as node config, which the server cannot set). A run that
asks for more is refused before anything of it is loaded, trained or charged, with one line
naming the option. In simulation, where the coordinator plays every site, they do not apply.

A site also trains at most the run's planned `rounds` times in a run: its noise was calibrated
for that many, so every further fit would spend budget past the run's epsilon target. DP sites
count the run's charges on their privacy ledger; --no-dp sites keep a small counter file next to
their data (FitCounter). Both are written before training, so a restarted site still counts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from common.config import RunConfig
from common.data import LocalDetailError
from common.errors import FedSiloError, printable
from common.files import atomic_write_json


@dataclass(frozen=True)
class Cap:
    key: str  # fl-client option (--KEY) and node-config key
    run_key: str  # the run option it bounds
    default: int
    help: str


CAPS: tuple[Cap, ...] = (
    Cap("max-rounds", "rounds", 100, "refuse a run that plans more rounds: the server picks them, and "
        "each round's noise is calibrated for that many (the site trains at most the run's rounds times)"),
    Cap("max-local-epochs", "local-epochs", 10, "refuse a run that asks for more passes over the data per round"),
    Cap("max-batch-size", "batch-size", 1024, "refuse a run that asks for larger batches (memory)"),
    Cap("max-length", "max-length", 512, "refuse a run that asks for longer texts, in tokens (memory, time)"),
    Cap("max-labels", "labels", 1000, "refuse a run whose label set is larger"),
)
CAPS_BY_KEY = {cap.key: cap for cap in CAPS}
ALLOW_MODEL = "allow-model"  # node config: the allowed base models, one per line
FITS_FORMAT = "fedsilo-site-fits-1"


class SiteRefusal(FedSiloError):
    """The site refuses what the server asked: nothing was trained and nothing charged."""


def applies(node_config) -> bool:
    """A real site (fl-client's node config names its data file); a simulated site belongs to the
    coordinator, who runs every one of them and sets the run anyway."""
    return "data-path" in node_config


def cap_value(node_config, cap: Cap) -> int:
    value = node_config.get(cap.key, cap.default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FedSiloError(f"--{cap.key} {value!r}: give a positive whole number")
    return value


def allowed_models(node_config) -> list[str]:
    """The site's --allow-model entries (the embedded default model is always allowed)."""
    value = node_config.get(ALLOW_MODEL, "")
    entries = value.split("\n") if isinstance(value, str) else list(value)
    return [str(entry) for entry in entries if str(entry)]


def model_allowed(model: str, allowed: list[str]) -> bool:
    """Compares names only: nothing at the path the server gave is looked at."""
    if model == "":
        return True
    return model in allowed or os.path.normpath(model) in {os.path.normpath(entry) for entry in allowed}


def check_run(run_config: dict, node_config: dict) -> None:
    """Refuse a run that asks this site for more than its operator allows, before anything of it
    (the model first of all) is loaded."""
    if not applies(node_config):
        return
    site = node_config.get("site", "site")
    model = run_config.get("model", "")
    if not isinstance(model, str) or not model_allowed(model, allowed_models(node_config)):
        # The same answer for every model not on the list, whatever (if anything) is at that path.
        raise SiteRefusal(f"site {site} refuses model {printable(str(model), 200)!r}: not on this site's "
                          "--allow-model list")
    cfg = RunConfig.from_dict(dict(run_config))
    held = str(node_config.get("task", "classify"))
    if cfg.task != held:  # the site's file holds one kind of data (fl-client --task)
        raise SiteRefusal(f"site {site} refuses the run: task {cfg.task}, and this site's data is for task {held} "
                          "(fl-client --task)")
    for cap in CAPS:
        value = getattr(cfg, cap.run_key.replace("-", "_"))
        asked = len(value) if isinstance(value, tuple) else value
        limit = cap_value(node_config, cap)
        if asked > limit:
            raise SiteRefusal(f"site {site} refuses the run: {cap.run_key} {asked} is above this site's "
                              f"--{cap.key} {limit}")


def check_fit_count(site: str, run_id: str, done: int, rounds: int) -> None:
    """Refuse a fit past the run's planned rounds (`done`: the fits this site trained in the run)."""
    if done >= rounds:
        raise SiteRefusal(f"site {site} refuses another fit: it trained {done} of the run's {rounds} planned "
                          "round(s) already, and its noise was calibrated for that many")


class FitCounter:
    """Fits trained per run, for a site without DP (a DP site counts its ledger's charges), and
    evaluations per run, for every site: one small JSON file next to the data, written
    (atomically) before each one runs. Evaluations are capped too because the server picks the
    model a site evaluates: each evaluation answers, in confusion counts, a question of the
    server's choosing about the held-out records, which DP does not cover."""

    def __init__(self, path: Path, site: str, what: str = "fit"):
        self.path, self.site, self.what = Path(path), site, what

    def _key(self, run_id: str) -> str:
        return str(run_id) if self.what == "fit" else f"{self.what}:{run_id}"

    def _read(self) -> dict:
        if not self.path.exists():
            return {"format": FITS_FORMAT, "runs": {}}
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if doc.get("format") != FITS_FORMAT or not isinstance(doc.get("runs"), dict) or not all(
                    isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in doc["runs"].values()):
                raise ValueError("not a FedSilo fit counter")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError, RecursionError) as err:
            raise LocalDetailError(f"site {self.site} refuses to train: its fit counter cannot be read",
                                   f"{self.path}: unreadable ({err}); restore it from a backup") from None
        return doc

    def count(self, run_id: str) -> int:
        return self._read()["runs"].get(self._key(run_id), 0)

    def charge(self, run_id: str, rounds: int) -> None:
        """Count one more fit (or evaluation) of the run, refusing it past the run's rounds."""
        doc = self._read()
        done = doc["runs"].get(self._key(run_id), 0)
        if self.what == "fit":
            check_fit_count(self.site, run_id, done, rounds)
        elif done >= rounds:
            raise SiteRefusal(f"site {self.site} refuses another {self.what}: it answered {done} of the run's "
                              f"{rounds} planned round(s) already")
        doc["runs"][self._key(run_id)] = done + 1
        try:
            atomic_write_json(self.path, doc)
        except OSError as err:
            raise LocalDetailError(f"site {self.site} refuses to train: its fit counter cannot be written",
                                   f"cannot write {self.path} ({err.strerror})") from None
