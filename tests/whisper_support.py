"""What the Whisper tests share: whether this CPU runs the served int8 step decoder's rows
independently. Where it does not, the loop falls back to the fp32 step graph
(``OrtRunner``'s load-time check) and the BLS path, which calls the served int8 model,
no longer gives the in-process loop's tokens: tests comparing the two skip there."""
from __future__ import annotations

import pytest


def skip_where_the_int8_step_mixes_rows(paths) -> None:
    import onnxruntime as ort

    from percolate_models.whisper_decode import row_independence_problems

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    served = paths.model_repository / "whisper_decoder_with_past" / "1" / "model.onnx"
    problems = row_independence_problems(ort.InferenceSession(str(served), options,
                                                               providers=["CPUExecutionProvider"]))
    if problems:
        pytest.skip(f"this CPU runs the int8 step decoder's rows dependently ({problems[0]}): "
                    "the in-process loop uses the fp32 step graph instead, the BLS path does not")
