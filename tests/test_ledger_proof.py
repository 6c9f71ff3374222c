"""
Proof of 100%: many concurrent sessions with random mixes (several responses,
audio, transcription, bursts, cancels, client drops, fragmented and large
messages, compression on and off); every token the upstream billed is on
/metrics, per operation, model, token type and modality.
"""

from __future__ import annotations

import json
import random
import socket
from typing import Any

from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.threads import deferToThread
from websockets.sync.client import connect

from agw.realtime import RelayOptions
from tests.support import (
    CLIENT_KEY,
    GatewayTestCase,
    ledger_modalities,
    modality_sums,
    recv_event,
    token_sums,
    wait_until,
)

SEED = 20261125
SESSIONS = 16


def until(ws: Any, event_type: str) -> None:
    while recv_event(ws)["type"] != event_type:
        pass


def random_session(url: str, rng: random.Random) -> str:
    """One session with a random mix; returns how it ended (for the failure message)."""
    ws = connect(
        url, max_size=None, open_timeout=10, compression="deflate" if rng.random() < 0.5 else None,
        additional_headers={"Authorization": f"Bearer {CLIENT_KEY}"},
    )
    recv_event(ws)
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.3:
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA" * rng.randint(1, 1000)}))
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            until(ws, "conversation.item.input_audio_transcription.completed")
        for _ in range(rng.randint(0, 20)):  # a burst
            ws.send(json.dumps({"type": "test.echo", "n": rng.random()}))
        if rng.random() < 0.2:  # a large message
            ws.send(json.dumps({"type": "test.echo", "audio": "A" * rng.randint(1, 3 * 1024 * 1024)}))
        if rng.random() < 0.2:  # a fragmented one
            ws.send(iter(['{"type": "test.echo", ', '"fragmented": ', "true}"]))
        modalities = ["audio"] if rng.random() < 0.5 else ["text"]
        ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": modalities}}))
        ending = rng.random()
        if ending < 0.15:
            until(ws, "response.created")
            ws.send(json.dumps({"type": "response.cancel"}))
            until(ws, "response.done")
        elif ending < 0.25:
            until(ws, "response.output_text.delta")
            ws.close(4000, "user hung up")
            return "closed mid-response"
        elif ending < 0.3:
            until(ws, "response.output_text.delta")
            ws.socket.shutdown(socket.SHUT_RDWR)
            ws.close()
            return "vanished mid-response"
        else:
            until(ws, "response.done")
    ws.close()
    return "completed"


class LedgerProofTests(GatewayTestCase):
    relay_options = RelayOptions(client_deflate="small")  # half the sessions offer compression: it is accepted

    @inlineCallbacks
    def test_every_billed_token_is_counted(self) -> Any:
        self.fake.response_delay = 0.05
        self.fake.transcription_usage = {
            "type": "tokens", "input_tokens": 11, "output_tokens": 3, "total_tokens": 14,
            "input_token_details": {"text_tokens": 0, "audio_tokens": 11},
        }
        url = f"{self.ws_base}/realtime?model=gpt-realtime"
        rngs = [random.Random(SEED + i) for i in range(SESSIONS)]
        results = yield DeferredList([deferToThread(random_session, url, rng) for rng in rngs], consumeErrors=True)
        failures = [r for ok, r in results if not ok]
        self.assertEqual(failures, [], f"seed {SEED}")
        endings = [r for _, r in results]
        yield wait_until(lambda: not any(len(r.connections) for r in self.gateway.relays), timeout=15)
        samples = yield self.scrape()
        billed = {k: float(v) for k, v in self.fake.billed().items()}
        self.assertEqual(billed, token_sums(samples), f"seed {SEED}, endings {endings}")
        self.assertEqual(ledger_modalities(self.fake.ledger), modality_sums(samples), f"seed {SEED}")
        self.assertGreater(len(self.fake.ledger), SESSIONS)
