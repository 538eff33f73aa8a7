"""What a valid model update is: checked by the site before it sends one and by the server
(plain aggregation) before it adds one in.

An update is the list of trainable tensors' changes, in the order and shapes of the global
model's trainable tensors. Anything else (a wrong count, shape or dtype, NaN/Inf, a norm above
the run's max-update-norm) is refused with a reason a person can act on.

On the wire, weights and updates travel packed: every tensor, flattened, in one vector (`pack`),
which each side cuts back into the tensors of the model it holds (`unpack`). Flower stores and
fetches each array of a message as separate objects, one request each, between SuperLink,
SuperNode and ClientApp; 26 LoRA tensors made 56 of them and cost 1.3 to 3.8 s per message
that carries the model (measured on the deployment engine), one vector a handful.
"""

from __future__ import annotations

import numpy as np

from common.errors import FedSiloError


def pack(tensors: list[np.ndarray]) -> list[np.ndarray]:
    """The tensors as they travel: one flat vector (their dtype), in a list as Flower wants."""
    return [np.concatenate([np.ravel(t) for t in tensors])]


def unpack(packed: list[np.ndarray], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """The tensors of the given shapes from a packed vector; FedSiloError says why one does not fit."""
    if len(packed) != 1 or np.ndim(packed[0]) != 1:
        got = [tuple(np.shape(p)) for p in packed]
        raise FedSiloError(f"not one packed vector but {len(packed)} array(s) of shapes {got[:3]}")
    vector, sizes = packed[0], [int(np.prod(s)) for s in shapes]
    if vector.size != sum(sizes):
        raise FedSiloError(f"{vector.size} values instead of {sum(sizes)} (different model or trainable set?)")
    return [part.reshape(shape) for part, shape in zip(np.split(vector, np.cumsum(sizes)[:-1]), shapes)]


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
