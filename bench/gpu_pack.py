"""Pack what bench/gpu_check.py needs on a GPU machine that has CUDA torch but no registry access.

    python bench/gpu_pack.py [--out .gpu] [--python-version 3.12]

Writes OUT/wheels (FedSilo's dependencies beyond torch and what such a machine's image already
holds, at the versions installed here, for CPython on manylinux x86-64) and OUT/minilm-shape (the
embedded MiniLM's config and tokenizer, without its 90 MB of weights: gpu_check.py gives the model
seeded random weights there, which time exactly like the trained ones). Refuses to leave more
than 60 MiB. OUT is git-ignored; carry it to the GPU machine with the repository.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIMIT_MIB = 60
# Imported by FedSilo or by Flower's SuperLink / SuperNode at start-up (found by importing their
# entry points here), and absent from, or older on, the GPU image (its package list:
# /work/.library/device/KINDS.md). grpcio and protobuf travel too: grpcio-health-checking pins them;
# cffi: cryptography's binding (found missing by a dry run in a venv holding only the image's packages).
PACKAGES = ("flwr", "opacus", "randomgen", "peft", "transformers", "cryptography", "pycryptodome",
            "cffi", "pycparser", "grpcio", "grpcio-health-checking", "protobuf", "iterators", "tomli", "tomli-w", "typer",
            "prompt-toolkit", "wcwidth", "sqlalchemy", "greenlet", "alembic", "mako", "fastapi", "starlette",
            "uvicorn", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "annotated-doc",
            "tokenizers", "huggingface-hub")
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34)] + ["manylinux2014_x86_64",
                                                                            "manylinux1_x86_64"]
MODEL_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / ".gpu")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python [default: 3.12]")
    args = p.parse_args()
    wheels = args.out / "wheels"
    shutil.rmtree(args.out, ignore_errors=True)
    wheels.mkdir(parents=True)
    pins = [f"{name}=={version(name)}" for name in PACKAGES]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
           "--python-version", args.python_version, *[a for plat in PLATFORMS for a in ("--platform", plat)],
           "-d", str(wheels), *pins]
    subprocess.run(cmd, check=True)
    from common.model import resolve_model  # the embedded model's folder

    source, shape = Path(resolve_model("")), args.out / "minilm-shape"
    shape.mkdir()
    for name in MODEL_FILES:
        shutil.copy2(source / name, shape / name)
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 2**20
    print(f"{args.out}: {len(list(wheels.iterdir()))} wheels and the model's shape, {total:.1f} MiB")
    if total > LIMIT_MIB:
        print(f"gpu_pack: more than {LIMIT_MIB} MiB: it would not travel with the repository", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
