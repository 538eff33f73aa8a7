"""--device on every tool: CUDA where there is none is one clear line before anything is written,
and the training paths follow the model's device (on a GPU machine, the CUDA tests below run)."""

import numpy as np
import pytest
import torch

from client.private_train import DPStepPlan, train_dp
from client.train import predict_logits, train_local
from common import device as devices
from common.batching import collate, encode
from common.config import RunConfig
from common.errors import FedSiloError
from common.model import build_model, get_weights, load_tokenizer
from tests.helpers import LABELS, assert_clean_error, run_cli, site_file

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "CUDA:0:1", ""])
def test_a_misspelt_device_is_refused(spec):
    with pytest.raises(FedSiloError, match="expected auto, cpu, cuda or cuda:N"):
        devices.resolve(spec)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_every_tool_refuses_cuda_where_there_is_none_and_writes_nothing(tiny_model, demo_dir, tmp_path):
    assert devices.resolve("auto") == torch.device("cpu")
    data = site_file(demo_dir, "A", tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli("fl-client", "--data", data, "--server", "127.0.0.1:9", "--insecure", "--device", "cuda")
    assert_clean_error(proc, "--device cuda: no CUDA device here")
    assert proc.returncode == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no ledger, audit log or key

    sim = ["fl-sim", "--sites", 2, "--data", demo_dir / "all.tsv", "--model", tiny_model,
           "--run-dir", tmp_path / "run"]
    for extra, fragment in ((["--device", "cuda"], "--device cuda: no CUDA device here"),
                            (["--gpus-per-site", "0.5"], "--gpus-per-site 0.5: torch sees no GPU"),
                            (["--device", "cuda:0"], "use --device cuda"),
                            (["--gpus-per-site", "nan"], "give a share from 0 to 64"),
                            (["--cpus-per-site", "0"], "give a whole number of CPUs"),
                            (["--ray-address", "127.0.0.1"], "expected HOST:PORT")):
        proc = run_cli(*sim, *extra)
        assert_clean_error(proc, fragment)
        assert proc.returncode == 2
    assert not (tmp_path / "run").exists()

    proc = run_cli("fl-predict", tmp_path, "--text", "hello", "--device", "cuda:1")
    assert_clean_error(proc, "--device cuda:1: no CUDA device here")


def _tiny(tiny_model, device: str):
    cfg = RunConfig(model=str(tiny_model), labels=tuple(LABELS.split(",")), trainable="full", local_epochs=1,
                    batch_size=8, learning_rate=3e-3)
    tok = load_tokenizer(cfg.model)
    texts = [f"card declined at shop {i}" if i % 2 else f"loan rate question {i}" for i in range(24)]
    data = encode(tok, texts, 32, np.array([i % 2 for i in range(24)]))
    return cfg, build_model(cfg, seed=0).to(devices.resolve(device)), data, tok.pad_token_id


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(NO_CUDA, reason="no CUDA"))])
def test_training_and_prediction_run_where_the_model_lives(tiny_model, device):
    cfg, model, data, pad = _tiny(tiny_model, device)
    batch = collate(data, [0, 1, 2], pad, devices.of(model))
    assert {t.device.type for t in batch.values()} == {device}
    before = get_weights(model)  # numpy on the host, whatever the device
    train_local(model, data, cfg, pad, seed=1)
    plan = DPStepPlan(noise_multiplier=1.0, sample_rate=0.25, steps=3, max_grad_norm=1.0)
    for ghost in (False, True):
        stats = train_dp(model, data, 3e-3, plan, pad, ghost=ghost)
        assert np.isfinite(stats["train_loss"])
    after = get_weights(model)
    assert all(a.dtype == np.float32 for a in after) and any(not np.array_equal(a, b) for a, b in zip(after, before))
    assert predict_logits(model, data, pad).shape == (24, 4)
    assert devices.of(model).type == device
    memory = devices.peak_memory(devices.of(model))
    assert memory["peak_rss_mib"] > 50 and (("gpu_peak_mib" in memory) == (device == "cuda"))


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_the_gpu_check_refuses_a_machine_without_cuda_in_one_line(tmp_path):
    import subprocess
    import sys

    from tests.helpers import ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert_clean_error(proc, "gpu_check: --device cuda: no CUDA device here")
    assert proc.returncode == 2 and list(tmp_path.iterdir()) == []
