"""SecAgg+ changes what the server sees, not what it computes: the securely aggregated round
equals plain FedAvg of the same deltas up to SecAgg+'s quantisation (stated in the README)."""

import numpy as np

from tests.helpers import run_cli

TOLERANCE = 1e-3  # absolute, per weight; the measured error is about 2e-4 (SECAGG_CLIP=1, 2**22 levels)


def test_secure_aggregate_equals_plain_fedavg(tiny_model, demo_dir, tmp_path):
    rounds = {}
    for mode in ("--secure-aggregation", "--no-secure-aggregation"):
        run_dir = tmp_path / mode.strip("-")
        proc = run_cli("fl-sim", "--sites", 3, "--data", demo_dir / "all.tsv", "--model", tiny_model, "--rounds", 1,
                       "--no-dp", "--batch-size", 16, "--learning-rate", 5e-3, "--run-dir", run_dir, mode)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        before, after = np.load(run_dir / "rounds" / "round-0000.npz"), np.load(run_dir / "rounds" / "round-0001.npz")
        rounds[mode] = [after[k] - before[k] for k in before.files]  # the aggregated delta
    secure, plain = rounds["--secure-aggregation"], rounds["--no-secure-aggregation"]
    error = max(float(np.abs(s - p).max()) for s, p in zip(secure, plain))
    largest = max(float(np.abs(p).max()) for p in plain)
    print(f"SecAgg+ vs plain FedAvg: max abs error {error:.2e}, largest delta {largest:.2e}")
    assert largest > 10 * TOLERANCE  # the sites really moved the model
    assert error <= TOLERANCE
