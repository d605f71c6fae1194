"""Model build: turns packaged weights into a Triton model repository.

One description per model (``catalog``) renders two targets: ``cpu`` (Python backend
running onnxruntime, the only backend in the pip-installed Triton) and ``gpu``
(native ``onnxruntime_onnx`` with TensorRT, for the official Triton container).
"""
