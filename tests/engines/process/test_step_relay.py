"""The engine process's per-step relay with several API servers (`--api_server_count`): each server gets only its
own requests' deltas, and one that has stopped reading (drained and gone) never stops the engine core."""
from __future__ import annotations

import threading

import msgspec
import zmq

from swiftops import PtEngine
from swiftops.engines.outputs import SequenceOutput
from swiftops.engines.process.engine_main import StepRelay, _Choice, _Request, connect_all
from swiftops.engines.process.messages import FromEngine, Steps


def test_a_gone_api_server_never_blocks_the_relay_and_each_gets_its_own(tiny_model_dir, tmp_path):
    engine = PtEngine(str(tiny_model_dir), max_batch_size=2)
    context = zmq.Context()
    try:
        receivers = []
        addresses = [f"ipc://{tmp_path}/outputs-{i}" for i in range(2)]
        for address in addresses:
            receiver = context.socket(zmq.PULL)
            receiver.bind(address)
            receivers.append(receiver)
        relay = StepRelay(connect_all(context, addresses), engine, {})
        receivers[1].close(linger=0)  # API server 1 has drained and exited: nothing reads its queue any more
        steps = 3000  # three times ZeroMQ's default queue of 1,000 messages
        ours = _Choice(2, 0, True, _Request(1))  # rid 2 % 2 == 0: API server 0's request
        done = threading.Event()

        def relay_steps() -> None:
            for step in range(steps):
                relay.call_soon_threadsafe(None, [(ours, SequenceOutput(0, token_ids=[step]))])
            done.set()

        threading.Thread(target=relay_steps, daemon=True).start()
        decoder = msgspec.msgpack.Decoder(FromEngine)
        received: list[int] = []
        while len(received) < steps and receivers[0].poll(10_000):
            message = decoder.decode(receivers[0].recv())
            assert isinstance(message, Steps)
            assert all(delta.rid == 2 for delta in message.deltas)
            received += [token for delta in message.deltas for token in delta.token_ids]
        assert done.wait(10), "the relay blocked on the API server that stopped reading"
        assert received == list(range(steps))
    finally:
        context.destroy(linger=0)
        engine.close()
