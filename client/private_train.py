"""DP-SGD at the site with Opacus: Poisson sampling, per-example clipping, Gaussian noise.

Two mechanisms, one per trainable set:
- LoRA (default): Opacus hooks compute per-example gradients. Each Poisson batch is sorted by
  length and run as micro-batches, each padded to its own longest text; their per-example
  gradients are joined into one tensor before a single clipped, noised optimizer step, so the
  step is exactly the one the whole batch would give, without paying for padding.
- full fine-tuning: Opacus ghost clipping (per-example gradient norms without materialising
  per-example gradients). Its loss must be the criterion Opacus returns: calling the model's
  own loss instead would silently skip clipping, so only `_ghost_backward` ever computes it.

Randomness: the noise and the Poisson batches come from the site's own CSPRNG
(client/dp_random.py), never from a seed: the run's seed is the coordinator's to set.

Accounting is not done here: the caller charges the ledger for (sigma, q, steps) before
training, whatever happens during it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from client.dp_random import SiteRandom
from common.batching import Encoded, collate
from common.errors import FedSiloError
from common.model import optimizer_groups

MICRO_BATCH = 32  # sequences per forward/backward inside one Poisson batch

# Frozen embeddings mean no input needs a gradient; PyTorch then warns about Opacus's full
# backward hooks on every step. The per-example gradients are right (tests/test_privacy.py).
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)


@dataclass(frozen=True)
class DPStepPlan:
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float


def _poisson_batches(n: int, q: float, steps: int, rng: SiteRandom):
    for _ in range(steps):
        yield rng.poisson_mask(n, q)


class _SiteNoise:
    """Opacus's add_noise with the noise drawn from the site's CSPRNG (client/dp_random.py)
    instead of torch's generator, which anyone who knows its seed can replay."""

    site_random: SiteRandom

    def add_noise(self):
        from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

        std = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier) * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            p.grad = (p.summed_grad + self.site_random.gaussian_like(p.summed_grad, std)).view_as(p)
            _mark_as_processed(p.summed_grad)


def _site_noise_optimizer(ghost: bool):
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

    base = DPOptimizerFastGradientClipping if ghost else DPOptimizer
    return type(f"SiteNoise{base.__name__}", (_SiteNoise, base), {})


def _micro_batches(data: Encoded, idx: np.ndarray, size: int | None = None):
    size = size or MICRO_BATCH
    order = idx[np.argsort([len(data.ids[i]) for i in idx], kind="stable")]
    return [order[i : i + size] for i in range(0, len(order), size)]


def make_private(model, lr: float, plan: DPStepPlan, expected_batch: int, ghost: bool,
                 head_lr: float | None = None, rng: SiteRandom | None = None):
    """Opacus's per-example gradient module and DP optimizer around the model's trainable weights
    (the classification head at `head_lr`, default `lr`); noise from `rng` (a fresh SiteRandom)."""
    groups = optimizer_groups(model, lr, lr if head_lr is None else head_lr)
    base = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    optimizer = _site_noise_optimizer(ghost)(base, noise_multiplier=plan.noise_multiplier,
                                             max_grad_norm=plan.max_grad_norm,
                                             expected_batch_size=expected_batch, loss_reduction="mean")
    optimizer.site_random = rng or SiteRandom()
    return _wrap(model, plan.max_grad_norm, ghost), optimizer


def backward_private(module, optimizer, data: Encoded, idx: np.ndarray, pad_id: int, ghost: bool) -> float | None:
    """Leave what optimizer.step() needs to take one clipped, noised step on the records `idx`;
    returns their mean loss (None for an empty Poisson batch)."""
    params = optimizer.params
    if ghost:
        return _ghost_backward(module, optimizer, data, idx, pad_id, params)
    loss = _hooks_backward(module, data, idx, pad_id, params)
    if data.weights is not None and len(idx):
        _weight_after_clipping(params, data.weights[idx], optimizer.max_grad_norm)
    return loss


def _weight_after_clipping(params, weights: np.ndarray, max_grad_norm: float) -> None:
    """fairness-reweight: each record's per-example gradient clipped to max_grad_norm, then times
    its weight (at most 1). Opacus clips again in step(), a no-op on these norms, so whatever the
    weights, no record's contribution exceeds the bound the accountant assumes."""
    grads = [p.grad_sample for p in params]
    norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in grads], dim=1).norm(2, dim=1)
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    factor = factor * torch.as_tensor(np.minimum(weights, 1.0), dtype=factor.dtype, device=factor.device)
    for p in params:
        p.grad_sample = p.grad_sample * factor.to(p.grad_sample.dtype).view(-1, *([1] * (p.grad_sample.dim() - 1)))


def train_dp(model, data: Encoded, lr: float, plan: DPStepPlan, pad_id: int,
             ghost: bool = False, desc: str = "dp-train", head_lr: float | None = None) -> dict[str, float]:
    """Run `plan.steps` DP-SGD steps; returns the mean training loss (for the site's own log).
    Takes no seed on purpose: noise and sampling are the site's own (module docstring)."""
    if ghost and not isinstance(data, Encoded):
        raise FedSiloError("task ner under DP needs per-example gradients: use --trainable lora or head, not full "
                           "(ghost clipping)")
    if ghost and data.weights is not None:
        raise FedSiloError("fairness-reweight under DP needs per-example gradients: use --trainable lora or head, "
                           "not full (ghost clipping)")
    model.train()
    rng = SiteRandom()
    torch.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)  # dropout: not the server's either
    expected = max(1, int(round(plan.sample_rate * len(data))))
    module, optimizer = make_private(model, lr, plan, expected, ghost, head_lr, rng)
    losses: list[float] = []
    bar = tqdm(_poisson_batches(len(data), plan.sample_rate, plan.steps, rng), total=plan.steps,
               desc=desc, unit="step", leave=False, mininterval=1.0, disable=None)
    try:
        for idx in bar:
            optimizer.zero_grad(set_to_none=True)
            loss = backward_private(module, optimizer, data, idx, pad_id, ghost)
            optimizer.step()  # clip (ghost: already clipped), add noise, divide by expected batch, update
            if loss is not None:
                losses.append(loss)
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
        module.remove_hooks()  # the caller gets its plain model back
        module.cleanup()
    return {"train_loss": float(np.mean(losses)) if losses else float("nan")}


def _wrap(model, max_grad_norm: float, ghost: bool):
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    if ghost:
        return GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="mean",
                                                    max_grad_norm=max_grad_norm, use_ghost_clipping=True)
    # "sum": the loss below is a sum, so grad_sample holds exact per-example gradients.
    return GradSampleModule(model, batch_first=True, loss_reduction="sum")


def _hooks_backward(module, data: Encoded, idx: np.ndarray, pad_id: int, params) -> float | None:
    if len(idx) == 0:  # an empty Poisson batch still takes a (pure-noise) step
        for p in params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        return None
    parts: dict[int, list[torch.Tensor]] = {id(p): [] for p in params}
    total = 0.0
    device = params[0].device
    for chunk in _micro_batches(data, idx):
        batch = data.batch(chunk, pad_id, device)
        labels = batch.pop("labels")
        loss = data.losses(module(**batch).logits, labels).sum()  # per record (NER: per sentence)
        loss.backward()
        total += loss.item()
        for p in params:
            parts[id(p)].append(p.grad_sample)
            p.grad_sample = None
    for p in params:
        # One tensor, not a list: a list would make Opacus treat the chunks as accumulated
        # steps (dividing the gradient by their number).
        p.grad_sample = torch.cat(parts[id(p)], dim=0)
    return total / len(idx)


def _ghost_backward(module, optimizer, data: Encoded, idx: np.ndarray, pad_id: int, params) -> float | None:
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    if len(idx) == 0:
        for p in params:
            p.grad = torch.zeros_like(p)
        return None
    criterion = DPLossFastGradientClipping(module, optimizer, torch.nn.CrossEntropyLoss(reduction="mean"),
                                           loss_reduction="mean")
    batch = collate(data, idx, pad_id, params[0].device)
    labels = batch.pop("labels")
    loss = criterion(module(**batch).logits, labels)
    loss.backward()  # two passes: per-example norms, then the clipped sum
    return loss.item()
