"""What a valid model update is: checked by the site before it sends one and by the server
(plain aggregation) before it adds one in.

An update is the list of trainable tensors' changes, in the order and shapes of the global
model's trainable tensors. Anything else (a wrong count, shape or dtype, NaN/Inf, a norm above
the run's max-update-norm) is refused with a reason a person can act on.
"""

from __future__ import annotations

import numpy as np


def update_norm(update: list[np.ndarray]) -> float:
    """L2 norm of the whole update, as one vector (float64, so float32 overflow cannot hide)."""
    return float(np.sqrt(sum(float(np.sum(np.square(u, dtype=np.float64))) for u in update)))


def update_problem(update: list[np.ndarray], reference: list[np.ndarray], max_norm: float = 0.0,
                   check_dtype: bool = True) -> str | None:
    """None for a valid update, else why it is refused; `reference` is the global model's
    trainable tensors (shapes and dtypes to match; an average is float64, hence check_dtype)."""
    if len(update) != len(reference):
        return f"{len(update)} tensors instead of {len(reference)}"
    for i, (u, ref) in enumerate(zip(update, reference)):
        if u.shape != ref.shape:
            return f"tensor {i} has shape {u.shape} instead of {ref.shape}"
        if check_dtype and u.dtype != ref.dtype:
            return f"tensor {i} has dtype {u.dtype} instead of {ref.dtype}"
    for i, u in enumerate(update):
        if not np.isfinite(u).all():
            return f"non-finite values (NaN/Inf) in tensor {i}"
    if max_norm > 0:
        norm = update_norm(update)
        if norm > max_norm:
            return f"norm {norm:.4g} above max-update-norm {max_norm:g}"
    return None
