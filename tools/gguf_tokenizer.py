"""A GGUF's tokenizer as a Hugging Face `tokenizer.json` that encodes as the GGUF's own tokenizer does.

Two kinds, as `tokenizer.ggml.model` names them:

* ``gpt2``: byte-level BPE (SmolLM, Llama 3, Qwen) from the vocabulary and its merges;
* ``llama``: SentencePiece BPE with byte fallback (Gemma, Llama 2), which GGUF stores as pieces with scores
  and no merges. llama.cpp (like SentencePiece) repeatedly joins the adjacent pair whose joined piece scores
  highest; Hugging Face's BPE joins the pair of lowest merge rank, so every pair of pieces that joins into a
  piece becomes a merge ranked by that piece's score (what `tokenizers`' own SentencePiece converter does).
  Spaces are written as ``▁`` (after a ``▁`` prefix when ``tokenizer.ggml.add_space_prefix``), characters
  outside the vocabulary fall back to their ``<0xXX>`` byte pieces, and control and user-defined pieces
  (``<start_of_turn>``, Gemma's runs of newlines) are matched whole in the text, as llama.cpp does with
  special tokens parsed.
"""

import sys

CONTROL, USER_DEFINED, BYTE, NORMAL = 3, 4, 6, 1
SPACE = "\u2581"


def metadata(reader, name: str, default=None):
    """A GGUF metadata value, or `default` where the file has none (the export reads its config with it too)."""
    return reader.fields[name].contents() if name in reader.fields else default


def tokenizer_json(reader) -> dict:
    model = metadata(reader, "tokenizer.ggml.model")
    if model == "gpt2":
        return byte_level_bpe(reader)
    if model == "llama":
        return sentencepiece_bpe(reader)
    sys.exit(f"unsupported GGUF tokenizer {model!r}: the export writes gpt2 (byte-level BPE) and llama "
             "(SentencePiece BPE) tokenizers")


# The pre-tokenizers of Llama 3 and Qwen2 (and the models converted with theirs): the splits of their own
# tokenizer.json files, as llama.cpp applies them to the names `tokenizer.ggml.pre` holds. Llama 3 groups
# digits in threes, Qwen2 splits each; Llama 3's BPE also takes a split whole when it is in the vocabulary.
SPLITS = {
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+",
}
PRE_TOKENIZERS = {"smollm": "smollm", "gpt2": "gpt2", "default": "gpt2", "llama-bpe": "llama3", "llama3": "llama3",
                  "llama-v3": "llama3", "qwen2": "qwen2", "deepseek-r1-qwen": "qwen2"}


def byte_level_bpe(reader) -> dict:
    """GPT-2-style byte-level BPE from the GGUF vocabulary, merges, control and user-defined tokens, with the
    pre-tokenizer `tokenizer.ggml.pre` names: GPT-2's split (`smollm` splitting digits individually first),
    or Llama 3's or Qwen2's regular expression."""
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    pre = PRE_TOKENIZERS.get(reader.fields["tokenizer.ggml.pre"].contents())
    if pre is None:
        sys.exit(f"unsupported GGUF pre-tokenizer {reader.fields['tokenizer.ggml.pre'].contents()!r}: the export "
                 "knows " + ", ".join(sorted(PRE_TOKENIZERS)))
    # Control tokens are special (dropped from decoded text); user-defined ones (a tool-calling model's
    # `<tool_call>`) are text, matched whole in input as llama.cpp matches them.
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": ty == CONTROL}
        for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (CONTROL, USER_DEFINED)
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    pretok = byte_level
    if pre == "smollm":
        pretok = {"type": "Sequence",
                  "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    if pre in SPLITS:
        pretok = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": SPLITS[pre]}, "behavior": "Isolated", "invert": False},
            {**byte_level, "trim_offsets": False, "use_regex": False}]}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pretok,
        "post_processor": byte_level,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": pre == "llama3",
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in merges],
        },
    }


def sentencepiece_bpe(reader) -> dict:
    def field(name, default=None):
        return metadata(reader, name, default)

    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    scores = field("tokenizer.ggml.scores")
    unknown = field("tokenizer.ggml.unknown_token_id")
    ids = {t: i for i, t in enumerate(tokens)}
    mergeable = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL}
    merges = []
    for piece, i in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                merges.append((-scores[i], mergeable[left], mergeable[right], left, right))
    merges.sort()
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": types[i] == CONTROL}
        for i, t in enumerate(tokens) if types[i] in (CONTROL, USER_DEFINED)
    ]
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    normalizer = replace
    if field("tokenizer.ggml.add_space_prefix", True):
        normalizer = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace]}
    # A model trained with a BOS before every text (`add_bos_token`) gets it from the post-processor, so
    # that inputs encoded with special tokens (raw completions prompts) start as in training; chat
    # templates write it themselves.
    post_processor = None
    bos = field("tokenizer.ggml.bos_token_id")
    if field("tokenizer.ggml.add_bos_token", False) and bos is not None:
        special = {"id": tokens[bos], "type_id": 0}
        post_processor = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": special}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": special}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tokens[bos]: {"id": tokens[bos], "ids": [bos], "tokens": [tokens[bos]]}},
        }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": None,
        "post_processor": post_processor,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": tokens[unknown] if unknown is not None else None,
            "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
            "byte_fallback": True, "ignore_merges": False,
            "vocab": ids,
            "merges": [[left, right] for *_, left, right in merges],
        },
    }
