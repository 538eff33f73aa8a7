"""The FedSilo ClientApp: what Flower runs at a site for each message.

It stays light (flwr and numpy, no torch) because Flower starts a new process for every message.
The round itself (train on local records with DP-SGD, return the delta; evaluate) is
client/site_round.py. Under fl-client it runs in the site worker, which keeps the model and the
tokenised data between messages (client/worker.py); in simulation it runs here, in the Ray actor.
Built on Flower's NumPyClient / ClientApp(client_fn=...) stack, the one SecAgg+ runs on.
"""

from __future__ import annotations

import sys
import traceback

from flwr.app import Context, Message, MessageType
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Error
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGGPLUS_CONFIGS

from client import worker_link
from common.data import print_local_detail
from common.errors import FedSiloError


class SiteClient(NumPyClient):
    def __init__(self, context: Context):
        self.task = {"run_id": str(context.run_id), "run_config": dict(context.run_config),
                     "node_config": dict(context.node_config)}

    def _run(self, op: str, parameters, config):
        request = {**self.task, "op": op, "parameters": parameters, "config": dict(config)}
        if worker_link.worker_env():
            return worker_link.call(request)
        from client.site_round import serve  # simulation: the actor process keeps the state

        return serve(request)

    def fit(self, parameters, config):
        return self._run("fit", parameters, config)

    def evaluate(self, parameters, config):
        return self._run("evaluate", parameters, config)


def client_fn(context: Context):
    return SiteClient(context).to_client()


def site_errors_mod(msg: Message, context: Context, call_next) -> Message:
    """A problem the site's operator can fix (bad data file, label outside the set, ...) becomes
    one line on the site's console and an error reply the server names in its round summary,
    instead of a traceback. The reply says only what may leave the site: an error's local detail
    (which labels, which path, what a file held) goes to the site's console alone."""
    try:
        return call_next(msg, context)
    except FedSiloError as err:
        print(f"fl-client: error: {err}", file=sys.stderr, flush=True)
        print_local_detail(err)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(err)), reply_to=msg)
    except Exception as err:  # noqa: BLE001 - a bug, whose text (it may quote data) Flower would send
        if "data-path" not in context.node_config:  # a simulated site: the coordinator's own, as before
            raise
        traceback.print_exc()
        reason = f"the site's ClientApp failed ({type(err).__name__}); the site's console has the traceback"
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


ALLOW_UNMASKED = "allow-unmasked-updates"  # node config, set only by fl-client --allow-unmasked-updates


def unmasked_updates_allowed(node_config) -> bool:
    """Whether this site may send its update in the clear. Only its own operator decides (node
    config comes from fl-client, never from the server); a simulated site belongs to the
    coordinator, who runs every virtual site anyway."""
    return node_config.get(ALLOW_UNMASKED) is True or "partition-id" in node_config


def secure_aggregation_mod(msg: Message, context: Context, call_next) -> Message:
    """Mask the update with Flower's SecAgg+ when the server runs it. A plain training round (the
    server would see this site's single update) runs only where the site's operator allowed it;
    evaluation replies carry counts, not updates, and pass."""
    if SECAGGPLUS_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    if msg.metadata.message_type == MessageType.TRAIN and not unmasked_updates_allowed(context.node_config):
        reason = ("site refuses to send an unmasked update: the server asked for a round without secure "
                  "aggregation; the site's operator allows that only with fl-client --allow-unmasked-updates")
        print(f"fl-client: {reason}", file=sys.stderr, flush=True)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
    return call_next(msg, context)


app = ClientApp(client_fn=client_fn, mods=[site_errors_mod, secure_aggregation_mod])
