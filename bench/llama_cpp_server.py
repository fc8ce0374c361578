"""llama-cpp-python's OpenAI server with llama.cpp's weight-repacking buffers off: on this machine's CPU
the AMX repack path crashes at the first inference (segfault), and the server has no option for it.
bench/gguf_llama_cpp.py loads models in-process with the same patch."""

import sys


def disable_repacking() -> None:
    """Every model llama-cpp-python loads from now on is loaded without the extra (repacking) buffers."""
    import llama_cpp.llama_cpp as native

    defaults = native.llama_model_default_params

    def without_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params

    native.llama_model_default_params = without_repacking


if __name__ == "__main__":
    disable_repacking()
    from llama_cpp.server.__main__ import main  # after the patch, which it must see

    sys.exit(main())
