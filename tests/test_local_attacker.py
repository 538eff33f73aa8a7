"""A local attacker: someone who can write files the coordinator later reads or runs from (a run
directory handed over, the folder fl-sim is started in), or read what it leaves behind.

Each test plays the attacker and fails on FedSilo before "Trust nothing you did not make": an app
planted in RUN_DIR/.flwr ran as the ServerApp, Ray imported packages from the working directory,
`fl-server resume` took argv and a working directory from an unsigned command.json, files were
world-readable, `enroll` overwrote a kit's key, and no command renewed the server certificate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509

from common.launch import app_dir, flower_env, free_port
from tests.helpers import LABELS, assert_clean_error, run_cli

# Flower's bundle builder (plant_app) warns about its own use of pathspec.
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")

MARK = "open({path!r}, 'a').write({what!r})\n"


def private_modes(root: Path, skip=()) -> dict[str, str]:
    """Every path under `root` that a group or other user may use: path -> mode."""
    loose = {}
    for path in [root, *root.rglob("*")]:
        if any(part in skip for part in path.relative_to(root).parts) or path.name.endswith(".pub"):
            continue  # what the attacker planted; public keys (0644 by design, in a 0700 folder)
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            loose[str(path.relative_to(root))] = oct(stat.S_IMODE(mode))
    return loose


def plant_app(run_dir: Path, markers: Path) -> Path:
    """The FedSilo app, as Flower would install it for this very bundle, with a ServerApp and a
    ClientApp that leave a marker when they are imported."""
    from flwr.cli.build import build_fab_from_disk

    version = tomllib.loads((app_dir() / "pyproject.toml").read_text())["project"]["version"]
    digest = hashlib.sha256(build_fab_from_disk(app_dir())).hexdigest()
    planted = run_dir / ".flwr" / "apps" / f"fedsilo.fedsilo.{version}.{digest[:8]}"
    for pkg in ("server", "client", "common"):
        shutil.copytree(app_dir() / pkg, planted / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(app_dir() / "pyproject.toml", planted / "pyproject.toml")
    for module in ("server/app.py", "client/app.py"):
        path, future = planted / module, "from __future__ import annotations\n"
        head, sep, rest = path.read_text().partition(future)
        mark = MARK.format(path=str(markers / "planted-app"), what=module)
        path.write_text(head + sep + mark + rest if sep else mark + head)
    return planted


@pytest.fixture(scope="module")
def attacked_sim(tiny_model, demo_dir, tmp_path_factory):
    """One short fl-sim run with every plant in place: an app folder in RUN_DIR/.flwr, and fake
    `server`, `client` and `common` packages in the folder it is started from."""
    root = tmp_path_factory.mktemp("attacked")
    markers, cwd, run_dir = root / "markers", root / "cwd", root / "run"
    markers.mkdir()
    for pkg in ("server", "client", "common"):
        (cwd / pkg).mkdir(parents=True)
        (cwd / pkg / "__init__.py").write_text(MARK.format(path=str(markers / f"cwd-{pkg}"), what=pkg))
    planted = plant_app(run_dir, markers)
    proc = run_cli("fl-sim", "--sites", 2, "--data", demo_dir / "all.tsv", "--model", tiny_model, "--rounds", 1,
                   "--no-dp", "--batch-size", 32, "--max-length", 32, "--trainable", "full",
                   "--run-dir", run_dir, cwd=cwd)
    return proc, run_dir, markers, planted


def test_an_app_planted_in_the_run_directory_never_runs(attacked_sim):
    proc, run_dir, markers, planted = attacked_sim
    assert not (markers / "planted-app").exists(), (markers / "planted-app").read_text()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert planted.is_dir()  # it was there to be found
    # The run's own FLWR_HOME went with the run.
    assert not list(run_dir.glob(".flwr-*"))


def test_packages_in_the_working_directory_are_never_imported(attacked_sim):
    proc, _, markers, _ = attacked_sim
    assert sorted(p.name for p in markers.iterdir() if p.name.startswith("cwd-")) == []
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert flower_env()["PYTHONSAFEPATH"] == "1"  # every Flower console script, like python -P


def test_the_run_directory_is_the_coordinators_alone(attacked_sim):
    proc, run_dir, _, _ = attacked_sim
    assert private_modes(run_dir, skip={".flwr"}) == {}
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("superlink.db", "logs/superlink.log", "logs/serverapp.log", "run-config.toml", "metrics.jsonl",
                 "state.json", "summary.json", "server-audit.key", "config.json"):
        assert (run_dir / name).exists(), name


@pytest.mark.parametrize("tool", ["fl-sim", "fl-server"])
def test_a_superlink_database_it_did_not_write_is_never_opened(tool, tiny_model, demo_dir, tmp_path):
    """A SuperLink database holding a pending run would have the SuperLink start that run, app
    bundle and all: one found in a run directory this coordinator did not write is refused."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "superlink.db").write_bytes(b"planted")
    common = ["--model", tiny_model, "--rounds", 1, "--run-dir", run_dir]
    if tool == "fl-sim":
        args = ["--sites", 2, "--data", demo_dir / "all.tsv", "--no-dp", *common]
    else:
        args = ["--insecure", "--port", free_port(), "--labels", LABELS, *common]
    proc = run_cli(tool, *args, timeout=300)
    assert_clean_error(proc, "superlink.db was not written by this coordinator")
    assert (run_dir / "superlink.db").read_bytes() == b"planted"


# ------------------------------------------------------------------ fl-server resume
def forged_run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "state.json").write_text(json.dumps({"last_round": 1, "config": {}}))
    return run_dir


def test_resume_refuses_a_command_file_it_did_not_sign(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    run_dir = forged_run_dir(tmp_path)
    # The old format: argv and a working directory, both chosen by whoever wrote the file.
    (tmp_path / "elsewhere").mkdir()
    (run_dir / "command.json").write_text(json.dumps({
        "cwd": str(tmp_path / "elsewhere"), "argv": ["--insecure", "--host", "0.0.0.0", "--labels", LABELS]}))
    assert_clean_error(run_cli("fl-server", "resume", run_dir, timeout=120), "was not written by this coordinator")

    from server.run_dir import coordinator_key, write_run_options

    options = {"insecure": True, "host": "0.0.0.0", "labels": LABELS}
    write_run_options(run_dir, options)
    saved = json.loads((run_dir / "command.json").read_text())
    # Signed here: accepted, and the options are what the coordinator then checks (plaintext
    # on a public address is refused as it would be on the command line).
    assert_clean_error(run_cli("fl-server", "resume", run_dir, timeout=120), "plaintext is allowed on 127.0.0.1 only")
    # Any option changed, or a signature made with another key: refused.
    (run_dir / "command.json").write_text(json.dumps({**saved, "options": {**options, "rounds": 99}}))
    assert_clean_error(run_cli("fl-server", "resume", run_dir, timeout=120), "was not written by this coordinator")
    key, key_path = coordinator_key()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600 and len(key) == 32
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "attacker-config"))
    write_run_options(run_dir, {**options, "rounds": 99})
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert_clean_error(run_cli("fl-server", "resume", run_dir, timeout=120), "was not written by this coordinator")
    # A signed file copied into another run directory: refused too.
    write_run_options(run_dir, options)
    (tmp_path / "copy").mkdir()
    other = forged_run_dir(tmp_path / "copy")
    shutil.copyfile(run_dir / "command.json", other / "command.json")
    assert_clean_error(run_cli("fl-server", "resume", other, timeout=120), "was written for the run directory")


# ------------------------------------------------------------------ the federation folder
@pytest.fixture
def fed(tmp_path) -> Path:
    fed = tmp_path / "fed"
    init = run_cli("fl-server", "init", "--dir", fed, "--host", "127.0.0.1", timeout=120)
    assert init.returncode == 0, init.stderr
    assert run_cli("fl-server", "enroll", "--dir", fed, "--site", "A", "--generate-site-key",
                   timeout=120).returncode == 0
    return fed


def test_federation_files_are_the_coordinators_alone(fed):
    assert private_modes(fed) == {}
    assert stat.S_IMODE((fed / "kits" / "A" / "site.key").stat().st_mode) == 0o600


def test_enroll_never_overwrites_a_kit_or_key(fed):
    key = (fed / "kits" / "A" / "site.key").read_bytes()
    assert_clean_error(run_cli("fl-server", "enroll", "--dir", fed, "--site", "A", timeout=120), "already enrolled")
    # The site's public key gone from sites/ (by hand, or half an enrolment): the kit is still its own.
    (fed / "sites" / "A.pub").unlink()
    assert_clean_error(run_cli("fl-server", "enroll", "--dir", fed, "--site", "A", timeout=120), "refusing to overwrite")
    assert (fed / "kits" / "A" / "site.key").read_bytes() == key
    # Asked for explicitly: a new key and kit.
    again = run_cli("fl-server", "enroll", "--dir", fed, "--site", "A", "--replace", "--generate-site-key",
                    timeout=120)
    assert again.returncode == 0, again.stderr
    assert (fed / "kits" / "A" / "site.key").read_bytes() != key
    assert (fed / "sites" / "A.pub").read_bytes() == (fed / "kits" / "A" / "site.key.pub").read_bytes()


def test_renew_extends_the_server_certificate_under_the_same_ca(fed, tmp_path):
    from server.federation import Federation

    init = run_cli("fl-server", "init", "--dir", tmp_path / "fed2", "--host", "127.0.0.1", timeout=120)
    assert "the server certificate expires on" in init.stdout, init.stdout

    kit_ca = x509.load_pem_x509_certificate((fed / "kits" / "A" / "ca.pem").read_bytes())
    before = x509.load_pem_x509_certificate((fed / "server.pem").read_bytes())
    server_key = (fed / "server.key").read_bytes()
    renew = run_cli("fl-server", "renew", "--dir", fed, "--days", 800, timeout=120)
    assert renew.returncode == 0, renew.stderr
    after = x509.load_pem_x509_certificate((fed / "server.pem").read_bytes())
    assert after.not_valid_after_utc > before.not_valid_after_utc + dt.timedelta(days=400)
    after.verify_directly_issued_by(kit_ca)  # a kit made before the renewal trusts it
    san = x509.SubjectAlternativeName
    assert after.extensions.get_extension_for_class(san).value == before.extensions.get_extension_for_class(san).value
    assert (fed / "server.key").read_bytes() == server_key and private_modes(fed) == {}
    Federation(fed).check()

    # A certificate about to expire: every start says so (here a start that is refused anyway).
    assert run_cli("fl-server", "renew", "--dir", fed, "--days", 10, timeout=120).returncode == 0
    (fed / "sites" / "A.pub").unlink()
    start = run_cli("fl-server", "--federation", fed, "--labels", LABELS, "--run-dir", tmp_path / "run", timeout=120)
    assert start.returncode != 0 and "no site is enrolled" in start.stderr
    assert "warning: the server certificate" in start.stderr and "fl-server renew --dir" in start.stderr
