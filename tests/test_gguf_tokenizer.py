"""A SentencePiece GGUF tokenizer (`tokenizer.ggml.model = llama`: pieces with scores, no merges, as Gemma's
and Llama 2's files store it) becomes a `tokenizer.json` that encodes as SentencePiece itself does. The
vocabulary is trained here with SentencePiece's own trainer (BPE, byte fallback, a user-defined piece and
control pieces, as Gemma's), written into a GGUF as llama.cpp's converter writes one, read back by
tools/gguf_tokenizer.py, and compared with SentencePiece encoding the same texts."""

import io
import json
import os
import sys

import gguf
import pytest
import sentencepiece as spm
from tokenizers import Tokenizer

from support import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import gguf_tokenizer  # noqa: E402

# Public domain: the opening of Jane Austen's Pride and Prejudice (1813), and some code and numbers.
CORPUS = """It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in
want of a wife. However little known the feelings or views of such a man may be on his first entering a
neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered
the rightful property of some one or other of their daughters. "My dear Mr. Bennet," said his lady to him one
day, "have you heard that Netherfield Park is let at last?" Mr. Bennet replied that he had not.
def fortune(man): return man.possessions * 10000 if man.single else 0
""".splitlines()
TEXTS = [
    "It is a truth universally acknowledged.",
    "Mr. Bennet replied that he had not, 10000 times.",
    "<start_of_turn>user\nHello, neighbourhood!<end_of_turn>\n",
    "Ünïcödé façade — 東京 🗼",  # outside the vocabulary: byte pieces
    "def fortune(man):\n\treturn 0",
]
USER_DEFINED = ["<start_of_turn>", "<end_of_turn>"]


@pytest.fixture(scope="module")
def trained():
    model = io.BytesIO()
    os.environ.setdefault("GLOG_minloglevel", "2")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, model_type="bpe", vocab_size=400,
        byte_fallback=True, character_coverage=1.0, add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", user_defined_symbols=USER_DEFINED,
        control_symbols=["<mask>"], bos_id=2, eos_id=1, unk_id=3, pad_id=0, bos_piece="<bos>",
        eos_piece="<eos>", pad_piece="<pad>")
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


@pytest.fixture(scope="module")
def converted(trained, tmp_path_factory):
    """The trained vocabulary as a GGUF's tokenizer fields, converted back into a `tokenizer.json`."""
    path = tmp_path_factory.mktemp("spm") / "tokenizer.gguf"
    pieces = range(trained.get_piece_size())

    def token_type(i: int) -> int:  # GGUF's (and SentencePiece's) piece types
        if trained.is_unknown(i):
            return 2
        if trained.is_control(i):
            return 3
        if trained.is_byte(i):
            return 6
        return 4 if trained.id_to_piece(i) in USER_DEFINED else 1

    types = [token_type(i) for i in pieces]
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([trained.id_to_piece(i) for i in pieces])
    writer.add_token_scores([trained.get_score(i) for i in pieces])
    writer.add_token_types(types)
    writer.add_bos_token_id(trained.bos_id())
    writer.add_eos_token_id(trained.eos_id())
    writer.add_unk_token_id(trained.unk_id())
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Tokenizer.from_str(json.dumps(gguf_tokenizer.tokenizer_json(gguf.GGUFReader(str(path)))))


@pytest.mark.parametrize("text", TEXTS)
def test_it_encodes_as_sentencepiece_does(trained, converted, text):
    expected = trained.encode(text)
    assert converted.encode(text, add_special_tokens=False).ids == expected
    assert converted.decode(expected, skip_special_tokens=False) == text


def test_a_text_encoded_with_special_tokens_starts_with_bos(trained, converted):
    ids = converted.encode("It is a truth", add_special_tokens=True).ids
    assert ids == [trained.bos_id(), *trained.encode("It is a truth")]
