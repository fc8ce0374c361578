// The PagedAttention form of a stateful OpenVINO decoder, behind a small C interface for the host's
// OpenVINO backend (host/src/backend/openvino/paged.rs).
//
// Why C++: OpenVINO's transformation to PagedAttention (`ov::pass::SDPAToPagedAttention`, what OpenVINO
// GenAI's continuous batching runs) exists only in the C++ API, and the PagedAttention nodes it writes keep
// their head counts and sizes in runtime info that neither an IR file nor an exported blob carries; so the
// transformation, the compilation and the inference of the transformed model must stay in one process, on
// one `ov::Model`. The host loads OpenVINO's C library itself; this library links the C++ one
// (`libopenvino.so.<version>`, the same file the C library uses), so both share one runtime.
//
// Every function catches OpenVINO's exceptions and reports them as a message: none crosses into Rust.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "openvino/op/constant.hpp"
#include "openvino/op/gather.hpp"
#include "openvino/op/matmul.hpp"
#include "openvino/op/parameter.hpp"
#include "openvino/op/result.hpp"
#include "openvino/openvino.hpp"
#include "openvino/pass/manager.hpp"
#include "openvino/pass/sdpa_to_paged_attention.hpp"

namespace {

// The inputs the host fills on every pass, beside the per-layer caches; the transformed model must have
// exactly these and the caches, so an OpenVINO that adds one fails at load, not with wrong answers.
const char* const PASS_INPUTS[] = {"input_ids",          "position_ids",  "past_lens",
                                   "subsequence_begins", "block_indices", "block_indices_begins",
                                   "max_context_len",    "logits_indices"};

// The input this library adds: which tokens of a pass need logits (the last of each sequence), gathered
// before the output head so a prompt's positions never go through the vocabulary-sized matmul.
const char* const LOGITS_INDICES = "logits_indices";

void report(const std::exception& e, char* error, size_t error_len) {
    if (error_len == 0) {
        return;
    }
    std::string message = e.what();
    // OpenVINO's messages span lines (nested exceptions): the host reports one line.
    std::replace(message.begin(), message.end(), '\n', ' ');
    std::strncpy(error, message.c_str(), error_len - 1);
    error[error_len - 1] = '\0';
}

bool starts_with(const std::string& s, const char* prefix) {
    return s.rfind(prefix, 0) == 0;
}

// Inserts a `logits_indices` [n] input and gathers the rows it names from the activations entering the
// output head, so the head computes n rows instead of one per token. The head's matmuls are those met
// walking up from the `logits` output through what is not a constant (exact mode's head adds two matmuls
// of 4-bit halves; a soft cap wraps one in elementwise operations).
void gather_before_head(const std::shared_ptr<ov::Model>& model) {
    auto indices = std::make_shared<ov::op::v0::Parameter>(ov::element::i64, ov::PartialShape{-1});
    indices->set_friendly_name(LOGITS_INDICES);
    indices->output(0).get_tensor().set_names({LOGITS_INDICES});
    auto axis = ov::op::v0::Constant::create(ov::element::i64, ov::Shape{}, {0});
    std::vector<std::shared_ptr<ov::Node>> walk{model->output("logits").get_node_shared_ptr()};
    std::vector<std::shared_ptr<ov::Node>> heads;
    // The head is a few operations deep; a walk that goes further has missed it.
    for (int depth = 0; depth < 8 && !walk.empty(); ++depth) {
        std::vector<std::shared_ptr<ov::Node>> next;
        for (const auto& node : walk) {
            for (size_t i = 0; i < node->get_input_size(); ++i) {
                auto source = node->get_input_node_shared_ptr(i);
                if (ov::is_type<ov::op::v0::MatMul>(source)) {
                    if (std::find(heads.begin(), heads.end(), source) == heads.end()) {
                        heads.push_back(source);
                    }
                } else if (!ov::is_type<ov::op::v0::Constant>(source)) {
                    next.push_back(source);
                }
            }
        }
        walk = std::move(next);
    }
    if (heads.empty() || !walk.empty()) {
        throw std::runtime_error("cannot find the matmuls that compute the model's logits");
    }
    for (const auto& head : heads) {
        auto gathered = std::make_shared<ov::op::v8::Gather>(head->input_value(0), indices, axis);
        head->input(0).replace_source_output(gathered);
    }
    model->add_parameters({indices});
    model->validate_nodes_and_infer_types();
}

}  // namespace

struct nnspin_paged {
    ov::Core core;
    ov::CompiledModel compiled;
    ov::InferRequest request;
    // The `key_cache.N` and `value_cache.N` inputs, and the dimensions of one block of each.
    std::vector<std::string> cache_names;
    std::vector<ov::element::Type> cache_types;
    std::vector<ov::Shape> block_shapes;
    size_t blocks = 0;
    size_t block_size = 0;
    size_t vocabulary = 0;
};

extern "C" {

// Reads the stateful IR at `xml_path` (its caches read through `beam_idx`), transforms it to
// PagedAttention, and compiles it on `device` with `property_count` key/value pairs of properties.
// Returns null with a message in `error` when any step fails.
nnspin_paged* nnspin_paged_load(const char* xml_path, const char* device, const char* const* properties,
                                size_t property_count, char* error, size_t error_len) {
    try {
        auto paged = std::make_unique<nnspin_paged>();
        std::shared_ptr<ov::Model> model = paged->core.read_model(xml_path);
        ov::pass::Manager manager;
        manager.register_pass<ov::pass::SDPAToPagedAttention>();
        manager.run_passes(model);
        bool transformed = false;
        for (const auto& input : model->inputs()) {
            transformed |= input.get_names().count("past_lens") > 0;
        }
        if (!transformed) {
            throw std::runtime_error(
                "OpenVINO found no attention to page: the IR's caches must be state read through beam_idx");
        }
        gather_before_head(model);

        ov::AnyMap config;
        for (size_t i = 0; i < property_count; ++i) {
            config[properties[2 * i]] = std::string(properties[2 * i + 1]);
        }
        paged->compiled = paged->core.compile_model(model, device, config);
        paged->request = paged->compiled.create_infer_request();

        for (const auto& input : paged->compiled.inputs()) {
            const std::string& name = input.get_any_name();
            if (starts_with(name, "key_cache.") || starts_with(name, "value_cache.")) {
                ov::Shape block;
                const auto& shape = input.get_partial_shape();
                for (size_t axis = 1; axis < shape.size(); ++axis) {
                    if (shape[axis].is_dynamic()) {
                        throw std::runtime_error(name + " leaves a dimension other than blocks free");
                    }
                    block.push_back(shape[axis].get_length());
                }
                // [kv_heads, block_size, head_size]; a u8 key cache adds its scales to the head size,
                // so the block size is read from a value cache.
                if (starts_with(name, "value_cache.")) {
                    paged->block_size = block.at(1);
                }
                paged->cache_names.push_back(name);
                paged->cache_types.push_back(input.get_element_type());
                paged->block_shapes.push_back(block);
            } else if (std::find_if(std::begin(PASS_INPUTS), std::end(PASS_INPUTS), [&](const char* known) {
                           return name == known;
                       }) == std::end(PASS_INPUTS)) {
                throw std::runtime_error("the paged model has an input nnspin does not fill: " + name);
            }
        }
        if (paged->cache_names.empty() || paged->block_size == 0) {
            throw std::runtime_error("the paged model has no value cache inputs");
        }
        const auto& logits = paged->compiled.output("logits").get_partial_shape();
        if (logits.rank().is_dynamic() || logits[logits.size() - 1].is_dynamic()) {
            throw std::runtime_error("the paged model's logits leave the vocabulary size free");
        }
        paged->vocabulary = logits[logits.size() - 1].get_length();
        return paged.release();
    } catch (const std::exception& e) {
        report(e, error, error_len);
        return nullptr;
    }
}

size_t nnspin_paged_block_size(const nnspin_paged* paged) { return paged->block_size; }

size_t nnspin_paged_vocabulary(const nnspin_paged* paged) { return paged->vocabulary; }

// Bytes of one block across all the caches.
size_t nnspin_paged_block_bytes(const nnspin_paged* paged) {
    size_t bytes = 0;
    for (size_t i = 0; i < paged->cache_names.size(); ++i) {
        bytes += ov::shape_size(paged->block_shapes[i]) * paged->cache_types[i].size();
    }
    return bytes;
}

}  // extern "C"

namespace {

// Replaces every cache with one of `blocks` blocks: the first `keep` blocks copied from the old cache,
// the rest zeroed (attention reads only the positions a sequence holds, but a NaN left in memory would
// still poison a masked product).
void resize(nnspin_paged* paged, size_t blocks, size_t keep) {
    for (size_t i = 0; i < paged->cache_names.size(); ++i) {
        ov::Shape shape{blocks};
        shape.insert(shape.end(), paged->block_shapes[i].begin(), paged->block_shapes[i].end());
        ov::Tensor resized(paged->cache_types[i], shape);
        // Blocks are the outermost axis, so the blocks kept are the first bytes of either tensor.
        size_t kept = 0;
        if (keep > 0) {
            ov::Tensor old = paged->request.get_tensor(paged->cache_names[i]);
            kept = old.get_byte_size() / paged->blocks * keep;
            std::memcpy(resized.data(), old.data(), kept);
        }
        std::memset(static_cast<char*>(resized.data()) + kept, 0, resized.get_byte_size() - kept);
        paged->request.set_tensor(paged->cache_names[i], resized);
    }
    paged->blocks = blocks;
}

}  // namespace

extern "C" {

// Makes the caches hold at least `blocks` blocks, keeping what the blocks already allocated hold.
int nnspin_paged_reserve(nnspin_paged* paged, size_t blocks, char* error, size_t error_len) {
    try {
        if (blocks > paged->blocks) {
            resize(paged, blocks, paged->blocks);
        }
        return 0;
    } catch (const std::exception& e) {
        report(e, error, error_len);
        return -1;
    }
}

// Gives the caches' memory back: they hold `blocks` empty blocks (at least one) afterwards.
int nnspin_paged_release(nnspin_paged* paged, size_t blocks, char* error, size_t error_len) {
    try {
        resize(paged, std::max<size_t>(blocks, 1), 0);
        return 0;
    } catch (const std::exception& e) {
        report(e, error, error_len);
        return -1;
    }
}

// One pass. `tokens` new tokens of `sequences` sequences, sequence i's being those from
// `subsequence_begins[i]` on, after `past_lens[i]` cached positions, in the blocks
// `block_indices[block_indices_begins[i] .. block_indices_begins[i + 1]]`. `logits_indices` names the
// `logits_count` tokens whose logits come back, in `*logits` ([logits_count, vocabulary]), valid until the
// next call.
int nnspin_paged_run(nnspin_paged* paged, const int64_t* input_ids, const int64_t* position_ids, size_t tokens,
                     const int32_t* past_lens, const int32_t* subsequence_begins,
                     const int32_t* block_indices_begins, size_t sequences, const int32_t* block_indices,
                     size_t block_count, int32_t max_context_len, const int64_t* logits_indices,
                     size_t logits_count, const float** logits, char* error, size_t error_len) {
    try {
        // The tensors wrap the host's buffers: nothing is copied in.
        auto wrap = [&](const char* name, ov::element::Type type, size_t count, const void* data) {
            paged->request.set_tensor(name, ov::Tensor(type, ov::Shape{count}, const_cast<void*>(data)));
        };
        wrap("input_ids", ov::element::i64, tokens, input_ids);
        wrap("position_ids", ov::element::i64, tokens, position_ids);
        wrap("past_lens", ov::element::i32, sequences, past_lens);
        wrap("subsequence_begins", ov::element::i32, sequences + 1, subsequence_begins);
        wrap("block_indices_begins", ov::element::i32, sequences + 1, block_indices_begins);
        wrap("block_indices", ov::element::i32, block_count, block_indices);
        wrap(LOGITS_INDICES, ov::element::i64, logits_count, logits_indices);
        paged->request.set_tensor("max_context_len",
                                  ov::Tensor(ov::element::i32, ov::Shape{}, &max_context_len));
        paged->request.infer();
        ov::Tensor out = paged->request.get_tensor("logits");
        if (out.get_element_type() != ov::element::f32 ||
            out.get_size() != logits_count * paged->vocabulary) {
            throw std::runtime_error("the paged model returned logits of shape " + out.get_shape().to_string());
        }
        *logits = out.data<const float>();
        return 0;
    } catch (const std::exception& e) {
        report(e, error, error_len);
        return -1;
    }
}

void nnspin_paged_free(nnspin_paged* paged) { delete paged; }

}  // extern "C"
