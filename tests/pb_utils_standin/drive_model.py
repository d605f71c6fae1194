"""Load a rendered Triton ``model.py`` the way the Python backend does and run one request.

Run by ``tests/test_whisper_py310.py`` with ``python -I`` from a venv holding only numpy:
argv is the model.py, a JSON file with Triton's ``initialize`` arguments, the input
``.npz`` (one array per input) and the output ``.npz``. The stand-in
``triton_python_backend_utils`` beside this file forwards BLS calls to a real Triton.
"""
import importlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triton_python_backend_utils as pb_utils  # noqa: E402  (the stand-in)


def main(model_py: str, args_json: str, inputs_npz: str, outputs_npz: str) -> None:
    # As the Python backend's stub does: the version folder and the model folder on
    # sys.path, then ``import <version>.model``.
    version_dir = Path(model_py).resolve().parent
    sys.path += [str(version_dir), str(version_dir.parent)]
    module = importlib.import_module(f"{version_dir.name}.{Path(model_py).stem}")
    model = module.TritonPythonModel()
    model.initialize(json.loads(Path(args_json).read_text()))
    with np.load(inputs_npz) as inputs:
        request = pb_utils.ModelRequest([pb_utils.Tensor(k, inputs[k]) for k in inputs.files])
    (response,) = model.execute([request])
    if response.has_error():
        raise SystemExit(f"model error: {response.error().message()}")
    np.savez(outputs_npz, **{t.name(): t.as_numpy() for t in response.output_tensors()})
    project = sorted(m for m in sys.modules if m.split(".")[0] in (
        "percolate_models", "onnxruntime", "cupy", "tritonclient", "grpc"))
    print(json.dumps({"python": list(sys.version_info[:3]), "numpy": np.__version__,
                      "bls_calls": pb_utils.exec_calls, "project_modules": project}))


if __name__ == "__main__":
    main(*sys.argv[1:])
