"""A Flower Grid for tests: the real FedSilo ClientApp answers each message in this process, as
node N with node N's own Context, and every message is recorded as it crossed the wire.

`sent` is every instruction the ServerApp pushed (as the node received it); `received` is every
reply (as the ServerApp got it): together, everything a curious server sees. Messages travel
as Flower's protobuf, both ways, and are checked with the SuperLink's own validator; ids are
set the way the SuperLink and SuperNode set them (a message's id is its object id; a reply
names the instruction's id in reply_to_message_id and swaps the src/dst node ids), which is
what SecAggPlusWorkflow's stages and server/app.py's BoundedGrid match replies by.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
from flwr.server.utils.validator import validate_message
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


def wire(msg: Message) -> Message:
    """The message as the other side gets it: serialised to Flower's protobuf and back."""
    return message_from_proto(ProtoMessage.FromString(message_to_proto(msg).SerializeToString()))


class InProcessGrid(Grid):
    def __init__(self, client_app, node_configs: dict[int, dict], run_config: dict, run_id: int = 1):
        self.app = client_app
        self._run = Run.create_empty(run_id)
        # What each SuperNode keeps between messages: its node config and the app's `state`.
        self.contexts = {nid: Context(run_id=run_id, node_id=nid, node_config=dict(cfg), state=RecordDict(),
                                      run_config=dict(run_config)) for nid, cfg in node_configs.items()}
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._task_ids = itertools.count(2)
        self.as_server()

    def as_server(self) -> None:
        """What Flower's runtime sets before a ServerApp runs (flwr/server/compat/app.py)."""
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, self._run.run_id, SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # as the SuperLink's Grid does
            assert not validate_message(msg, is_reply_message=False), validate_message(msg, False)
            assert msg.metadata.dst_node_id in self.contexts, f"no node {msg.metadata.dst_node_id}"
            self.sent.append(wire(msg))  # copies: the apps may change what they are handed
            reply = self._run_clientapp(wire(msg))
            self.received.append(wire(reply))
            self._replies[msg.metadata.message_id] = wire(reply)
            ids.append(msg.metadata.message_id)
        return ids

    def _run_clientapp(self, msg: Message) -> Message:
        """What flwr-clientapp does for one message (flwr/supernode/runtime/run_clientapp.py)."""
        nid = msg.metadata.dst_node_id
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = next(self._task_ids), self._run.run_id, nid
        context = context_from_proto(context_to_proto(self.contexts[nid]))  # what the SuperNode stores
        try:
            reply = self.app(msg, context)
        except Exception as ex:  # noqa: BLE001 - the runtime turns it into an error reply
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                  reason=f"{type(ex)}:<'{ex}'>"), reply_to=msg)
        else:
            self.contexts[nid] = context
        finally:
            self.as_server()
        reply.metadata.__dict__["_message_id"] = reply.object_id  # as run_clientapp's push_message
        assert not validate_message(reply, is_reply_message=True), validate_message(reply, True)
        meta = reply.metadata
        assert (meta.reply_to_message_id, meta.src_node_id, meta.run_id) == (
            msg.metadata.message_id, nid, msg.metadata.run_id), meta
        return reply

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
