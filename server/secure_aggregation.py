"""Secure aggregation: Flower's SecAgg+ workflow with FedSilo's parameters and two guards.

Each sampled site shares its key material (Shamir shares of its mask secrets, pairwise masks)
with a neighbourhood: the sites next to it on a ring that Flower shuffles every round. With
`secagg-neighbours = 0` the neighbourhood is every sampled site (the original SecAgg); with K it
is K sites, the site itself included (SecAgg+), so a round's key agreement grows with sites x K
instead of sites squared.

What the server can add up from the masked vectors it receives: a pairwise mask cancels only when
both of its sites are in the sum, so the only sums it can unmask are over whole connected pieces
of the surviving sites' neighbourhood graph. The guards:
- unmask only when the surviving sites form ONE connected piece (with a sparse neighbourhood,
  dropouts could otherwise split them, and each piece's sum would leak); the round fails instead;
- refuse more sites than the modulus can sum without wrapping (quantised values of up to 2**22
  each, summed modulo 2**32: at most 1,024 sites per round; the strategy checks it when it
  samples the round's sites, before any key is exchanged).
"""

from __future__ import annotations

from logging import ERROR

from flwr.common.logger import log
from flwr.server import Grid, LegacyContext
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from common.config import RunConfig

# SecAgg+ clips each value of an update to +-SECAGG_CLIP and quantises it to 2**22 levels after
# weighting it by num_examples / SECAGG_MAX_WEIGHT. Sites send deltas (LoRA deltas after a round
# of DP-SGD stay well inside +-1); the aggregate then matches plain FedAvg to about 1e-4
# (measured in tests/test_secure_aggregation.py). Sites with more than SECAGG_MAX_WEIGHT training
# records are weighted as if they had SECAGG_MAX_WEIGHT.
SECAGG_CLIP = 1.0
SECAGG_QUANTIZATION = 2**22
SECAGG_MODULUS = 2**32  # Flower's default modulus_range
SECAGG_MAX_WEIGHT = 100_000.0
MAX_SITES_PER_ROUND = SECAGG_MODULUS // SECAGG_QUANTIZATION


def workflow(cfg: RunConfig) -> DefaultWorkflow:
    if not cfg.secure_aggregation:
        return DefaultWorkflow()
    return DefaultWorkflow(fit_workflow=GuardedSecAggPlus(
        num_shares=cfg.secagg_neighbours or 1.0, reconstruction_threshold=cfg.secagg_threshold,
        clipping_range=SECAGG_CLIP, quantization_range=SECAGG_QUANTIZATION, modulus_range=SECAGG_MODULUS,
        max_weight=SECAGG_MAX_WEIGHT, timeout=cfg.round_timeout))


def connected(nodes: set[int], neighbours: dict[int, set[int]]) -> bool:
    """Whether `nodes` form one connected piece of the graph, using only edges inside `nodes`."""
    if not nodes:
        return True
    start = next(iter(nodes))
    seen, frontier = {start}, [start]
    while frontier:
        for nid in neighbours[frontier.pop()] & nodes:
            if nid not in seen:
                seen.add(nid)
                frontier.append(nid)
    return len(seen) == len(nodes)


class GuardedSecAggPlus(SecAggPlusWorkflow):
    """SecAggPlusWorkflow that refuses to unmask survivors that fell apart.

    A refused round tells the strategy why (its refuse_round), which reports it as failed with
    the global model unchanged."""

    def unmask_stage(self, grid: Grid, context: LegacyContext, state) -> bool:
        # The survivors' masked vectors are all the server holds; asking for key shares when they
        # fall apart into pieces would let it unmask each piece's sum.
        if not connected(set(state.active_node_ids), state.nid_to_neighbours):
            return refuse(context, f"secure aggregation refused: the {len(state.active_node_ids)} surviving sites "
                                   "no longer form one connected neighbourhood graph (too many dropouts next "
                                   "to each other), so partial sums could be unmasked; raise secagg-neighbours")
        return super().unmask_stage(grid, context, state)


def refuse(context: LegacyContext, reason: str) -> bool:
    log(ERROR, "%s", reason)
    context.strategy.refuse_round(reason)
    return False
