"""Continuous batching must not change an answer: concurrent requests decode in shared, batched passes
(ONNX Runtime; OpenVINO runs them side by side), and each must read exactly as it does alone."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx

from conftest import DEFAULT_MODEL

CHAT = "/v1/chat/completions"

QUESTIONS = [
    "What is the capital of France? Answer in English.",
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "What is 12 plus 30?",
    "List the days of the week.",
    "Why is the sky blue? Answer briefly.",
    "Translate 'good morning' into Spanish.",
    "Give a short tip for learning to cook.",
]


def answer(host, question: str, stream: bool, model: str = DEFAULT_MODEL) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 24,
            "temperature": 0, "stream": stream}
    if not stream:
        response = httpx.post(host.url + CHAT, json=body, timeout=300)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]
    text = []
    with httpx.stream("POST", host.url + CHAT, json=body, timeout=300) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:])["choices"]:
                    text.append(choice["delta"].get("content") or "")
    return "".join(text)


def test_eight_concurrent_greedy_requests_answer_as_each_does_alone(host):
    # Half of them streamed: both paths share the same execution contexts.
    streamed = [i % 2 == 1 for i in range(len(QUESTIONS))]
    alone = [answer(host, q, s) for q, s in zip(QUESTIONS, streamed)]
    assert all(alone) and len(set(alone)) == len(alone), alone
    assert "Paris" in alone[0], alone[0]
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(lambda qs: answer(host, *qs), zip(QUESTIONS, streamed)))
    assert together == alone
