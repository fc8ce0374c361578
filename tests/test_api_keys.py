"""Optional API keys: once configured, every request but health checks needs `Authorization: Bearer`,
refused with OpenAI's 401 otherwise; keys never reach the log."""

import httpx
import openai
import pytest

from support import TINY_MODEL, openai_app, running_host

KEYS = ["sk-nnspin-first-3f9a", "sk-nnspin-second-77c1"]
FILE_KEY = "sk-nnspin-from-file-0b2e"


@pytest.fixture(scope="module")
def keyed_host(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    keys_file = directory / "keys.txt"
    keys_file.write_text(FILE_KEY + "\n")
    with running_host(openai_app(directory, [TINY_MODEL]), "--api-keys-file", str(keys_file),
                      env={"NNSPIN_API_KEYS": ",".join(KEYS)}) as host:
        yield host


def test_requests_without_a_valid_key_get_401(keyed_host):
    url = keyed_host.openai_url + "/models"
    for headers in [{}, {"authorization": "Bearer sk-wrong"}, {"authorization": KEYS[0]},
                    {"authorization": "Bearer " + KEYS[0][:-1]}]:
        response = httpx.get(url, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        body = response.json()
        assert body["error"]["type"] == "invalid_request_error" and body["detail"]
    for key in KEYS + [FILE_KEY]:
        assert httpx.get(url, headers={"authorization": f"Bearer {key}"}).status_code == 200
    assert httpx.get(keyed_host.url + "/health").status_code == 200


def test_the_sdk_authenticates_with_its_api_key(keyed_host):
    good = openai.OpenAI(base_url=keyed_host.openai_url, api_key=KEYS[1], max_retries=0)
    completion = good.chat.completions.create(model=TINY_MODEL, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=2, temperature=0)
    # The tiny model does not end its turn this early: an answer of exactly two tokens.
    assert completion.usage.completion_tokens == 2 and completion.choices[0].message.content
    bad = openai.OpenAI(base_url=keyed_host.openai_url, api_key="sk-guess", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_keys_are_never_logged(keyed_host):
    httpx.get(keyed_host.openai_url + "/models", headers={"authorization": "Bearer sk-guess-me"})
    log = "".join(keyed_host.log)
    assert "API keys required" in log
    for secret in KEYS + [FILE_KEY, "sk-guess-me"]:
        assert secret not in log
