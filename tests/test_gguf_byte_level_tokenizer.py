"""A byte-level BPE GGUF tokenizer with Llama 3's or Qwen2's pre-tokenizer (`tokenizer.ggml.pre` =
`llama-bpe`, `qwen2`) becomes a `tokenizer.json` that encodes as llama.cpp does. The reference is a reading of
llama.cpp's BPE tokenizer in Python: its own rewrite of each regular expression (case-insensitive
contractions spelled out), GPT-2's byte-to-character map, merges applied lowest rank first, and for Llama 3 a
split taken whole when the vocabulary has it (`ignore_merges`). The vocabulary and merges are SmolLM2's, the
pre-tokenizer name replaced, a user-defined token (matched whole) and a token no merge makes added."""

import json
import sys

import gguf
import pytest
import regex
from tokenizers import Tokenizer

from support import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import gguf_tokenizer  # noqa: E402
from export_model import default_model_gguf  # noqa: E402

# llama.cpp's src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_LLAMA3 and _QWEN2.
LLAMA_CPP_SPLITS = {
    "llama-bpe": r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
USER_DEFINED = "<tool_call>"
# In the vocabulary, but no merge makes it: Llama 3's BPE takes it whole, Qwen2's spells it from merges.
UNMERGED = "\u0120nnspinword"  # " nnspinword" in GPT-2's byte characters
TEXTS = [
    "It is a truth universally acknowledged, 1234567 times; I'LL say it's so.",
    "def fortune(man):\n\n\treturn man.possessions * 10000   \n  end",
    f"{USER_DEFINED}\n{{\"name\": \"get_weather\"}}",
    "Ünïcödé façade — 東京 🗼  ",
    "hello world, nnspinword",
]


def byte_to_char() -> dict[int, str]:
    """GPT-2's map of bytes to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = printable[:]
    shifted = 256
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(shifted)
            shifted += 1
    return dict(zip(printable, map(chr, chars)))


class Reference:
    """llama.cpp's byte-level BPE: split, map bytes to characters, merge by rank."""

    def __init__(self, tokens: list[str], merges: list[str], pre: str):
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.split = regex.compile(LLAMA_CPP_SPLITS[pre])
        self.ignore_merges = pre == "llama-bpe"
        self.chars = byte_to_char()

    def word(self, word: str) -> list[int]:
        text = "".join(self.chars[b] for b in word.encode())
        if self.ignore_merges and text in self.ids:
            return [self.ids[text]]
        parts = list(text)
        while len(parts) > 1:
            ranked = [(self.ranks.get((a, b), len(self.ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(ranked)
            if rank == len(self.ranks):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return [self.ids[p] for p in parts]

    def encode(self, text: str) -> list[int]:
        ids = []
        for i, chunk in enumerate(text.split(USER_DEFINED)):
            if i:
                ids.append(self.ids[USER_DEFINED])
            for word in self.split.findall(chunk):
                ids += self.word(word)
        return ids


@pytest.fixture(scope="module", params=["llama-bpe", "qwen2"])
def tokenizers(request, tmp_path_factory):
    """The reference and the converted `tokenizer.json` of the vocabulary under pre-tokenizer `param`."""
    source = gguf.GGUFReader(str(default_model_gguf()))
    field = lambda name: source.fields[name].contents()  # noqa: E731
    tokens = field("tokenizer.ggml.tokens") + [USER_DEFINED, UNMERGED]
    types = field("tokenizer.ggml.token_type") + [gguf.TokenType.USER_DEFINED, gguf.TokenType.NORMAL]
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(request.param)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(field("tokenizer.ggml.merges"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    converted = Tokenizer.from_str(json.dumps(gguf_tokenizer.tokenizer_json(gguf.GGUFReader(str(path)))))
    return Reference(tokens, field("tokenizer.ggml.merges"), request.param), converted


@pytest.mark.parametrize("text", TEXTS)
def test_it_encodes_as_llama_cpp_does(tokenizers, text):
    reference, converted = tokenizers
    expected = reference.encode(text)
    assert converted.encode(text, add_special_tokens=False).ids == expected
    assert converted.decode(expected, skip_special_tokens=False) == text


def test_digits_split_as_each_pre_tokenizer_splits_them(tokenizers):
    reference, converted = tokenizers
    pieces = converted.pre_tokenizer.pre_tokenize_str("1234567")
    groups = {"llama-bpe": ["123", "456", "7"], "qwen2": list("1234567")}
    pre = "llama-bpe" if reference.ignore_merges else "qwen2"
    assert [p for p, _ in pieces] == groups[pre]
