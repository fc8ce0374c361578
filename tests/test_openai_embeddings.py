"""/v1/embeddings through the official OpenAI SDK: the vectors of sentence-transformers' all-MiniLM-L6-v2 as
a plain NumPy forward pass of its safetensors weights computes them (tools/export_encoder.py's reference),
on each backend and precision mode; every input shape; batches; the errors of a wrong model, an input
beyond the model's length and `dimensions`."""

import base64
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer

from support import DEFAULT_MODEL, EMBEDDING_MODEL, ROOT, assert_json_error

sys.path.insert(0, str(ROOT / "tools"))
import export_encoder  # noqa: E402

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Déjà vu: naïve café owners in Zürich serve crème brûlée 🍮 at 9 p.m.",
]


@pytest.fixture(scope="module")
def reference():
    """The NumPy reference's vector for a list of texts, framed by the model's own tokenizer."""
    encoder = export_encoder.Encoder(export_encoder.default_source())
    tokenizer = Tokenizer.from_file(str(ROOT / "models" / EMBEDDING_MODEL / "tokenizer.json"))

    def vectors(texts):
        rows = [tokenizer.encode(t).ids for t in texts]
        width = max(map(len, rows))
        ids = np.array([r + [0] * (width - len(r)) for r in rows])
        mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return export_encoder.reference_embeddings(encoder, ids, mask)

    return vectors


def tolerance(host):
    # Exact mode is fp32 throughout; fast mode may run bf16 where the CPU has it.
    return 1e-4 if host.precision == "exact" else 2e-2


def test_vectors_are_the_models_own(client, host, reference):
    response = client.embeddings.create(model=EMBEDDING_MODEL, input=SENTENCES)
    got = np.array([d.embedding for d in response.data])
    assert [d.index for d in response.data] == list(range(len(SENTENCES)))
    assert got.shape == (len(SENTENCES), 384)
    want = reference(SENTENCES)
    np.testing.assert_allclose(got, want, atol=tolerance(host))
    cosines = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosines.min() >= 0.9999, cosines
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-3), "normalised as modules.json says"
    # What the model is for: related sentences close, unrelated far (sentence-transformers' own example).
    assert got[0] @ got[1] > 0.7 > 0.0 > got[0] @ got[2]
    assert response.model == EMBEDDING_MODEL
    tokenizer = Tokenizer.from_file(str(ROOT / "models" / EMBEDDING_MODEL / "tokenizer.json"))
    counted = sum(len(tokenizer.encode(s).ids) for s in SENTENCES)
    assert response.usage.prompt_tokens == response.usage.total_tokens == counted
    # The SDK asks for base64 unless told otherwise, and decodes it: the float answer is the same.
    floats = client.embeddings.create(model=EMBEDDING_MODEL, input=SENTENCES, encoding_format="float")
    np.testing.assert_allclose(np.array([d.embedding for d in floats.data]), got, atol=1e-6)


def test_a_vector_does_not_depend_on_its_batch(client, host):
    """Padding beside longer inputs, and being one of many passes, change nothing."""
    alone = client.embeddings.create(model=EMBEDDING_MODEL, input=SENTENCES[0]).data[0].embedding
    many = [SENTENCES[3]] * 20 + [SENTENCES[0]] + ["short"] * 20
    batched = client.embeddings.create(model=EMBEDDING_MODEL, input=many).data
    assert len(batched) == 41
    np.testing.assert_allclose(batched[20].embedding, alone, atol=tolerance(host))
    np.testing.assert_allclose(batched[0].embedding, batched[19].embedding, atol=1e-6)


def test_concurrent_requests_get_what_each_gets_alone(host):
    """ONNX Runtime merges the passes of concurrent requests into one run: rows padded beside other
    requests' rows must not change a vector."""
    url = host.openai_url + "/embeddings"

    def vector(text):
        body = httpx.post(url, json={"model": EMBEDDING_MODEL, "input": text}, timeout=120).json()
        return np.array(body["data"][0]["embedding"])

    alone = [vector(s) for s in SENTENCES]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(vector, SENTENCES * 4))
    for i, got in enumerate(together):
        np.testing.assert_allclose(got, alone[i % len(SENTENCES)], atol=1e-5)


def test_every_input_shape_and_encoding(host, reference):
    tokenizer = Tokenizer.from_file(str(ROOT / "models" / EMBEDDING_MODEL / "tokenizer.json"))
    ids = [tokenizer.encode(s).ids for s in SENTENCES[:2]]
    want = reference(SENTENCES[:2])
    url = host.openai_url + "/embeddings"
    for input, rows in [(SENTENCES[0], [0]), (SENTENCES[:2], [0, 1]), (ids[0], [0]), (ids, [0, 1])]:
        for encoding in ("float", "base64"):
            # No model named: the component's first embedding model serves.
            body = httpx.post(url, json={"input": input, "encoding_format": encoding}, timeout=60).json()
            vectors = [d["embedding"] for d in body["data"]]
            if encoding == "base64":
                vectors = [np.frombuffer(base64.b64decode(v), dtype="<f4") for v in vectors]
            np.testing.assert_allclose(np.array(vectors), want[rows], atol=tolerance(host))


def test_wrong_models_and_inputs_are_clear_400s(host):
    url = host.openai_url
    long_text = "word " * 300
    for path, body, param, says in [
        ("/embeddings", {"model": DEFAULT_MODEL, "input": "hi"}, "model", "does not serve embeddings"),
        ("/chat/completions", {"model": EMBEDDING_MODEL, "messages": [{"role": "user", "content": "hi"}]},
         "model", "is an embedding model"),
        ("/completions", {"model": EMBEDDING_MODEL, "prompt": "hi"}, "model", "is an embedding model"),
        ("/embeddings", {"model": EMBEDDING_MODEL, "input": ["fine", long_text]}, "input", "at most 256 tokens"),
        ("/embeddings", {"model": EMBEDDING_MODEL, "input": "hi", "dimensions": 128}, "dimensions", "384"),
        ("/embeddings", {"model": EMBEDDING_MODEL, "input": [[101, 99999, 102]]}, "input", "vocabulary"),
        ("/embeddings", {"model": EMBEDDING_MODEL, "input": ""}, "input", "empty"),
        ("/embeddings", {"model": "no-such-model", "input": "hi"}, "model", "no-such-model"),
    ]:
        response = httpx.post(url + path, json=body, timeout=60)
        status = 404 if body.get("model") == "no-such-model" else 400
        error = assert_json_error(response, status)["error"]
        assert error.get("param") == param, (path, body, error)
        assert says in error["message"], error["message"]
    response = httpx.post(url + "/embeddings", json={"model": EMBEDDING_MODEL, "input": long_text}, timeout=60)
    assert assert_json_error(response, 400)["error"]["code"] == "context_length_exceeded"
    # The model's own size is accepted.
    body = {"model": EMBEDDING_MODEL, "input": "hi", "dimensions": 384}
    assert len(httpx.post(url + "/embeddings", json=body, timeout=60).json()["data"][0]["embedding"]) == 384
