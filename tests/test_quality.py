"""Answer quality: the default model keeps its GGUF's Q4_1 weights as 4-bit blocks but computes with fp32
activations (no int8 activations, no second quantization), so on a fixed prompt set its greedy answers are
those of the same weights dequantized to fp32 (`tools/export_model.py --format fp32`, made by tests/run.sh)."""

from support import DEFAULT_MODEL, QUESTIONS, ROOT, answer, openai_app, running_host

FP32_MODEL = "smollm2-fp32"


def test_greedy_answers_are_those_of_the_fp32_weights(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / DEFAULT_MODEL).symlink_to(ROOT / "models" / DEFAULT_MODEL)
    (models / FP32_MODEL).symlink_to(ROOT / "target" / "test-fixtures" / FP32_MODEL)
    with running_host(openai_app(tmp_path, [DEFAULT_MODEL, FP32_MODEL]), models_dir=models) as host:
        for question in QUESTIONS:
            served, reference = (answer(host, question, False, model) for model in (DEFAULT_MODEL, FP32_MODEL))
            assert served == reference, question
