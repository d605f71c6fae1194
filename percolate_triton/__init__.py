"""Run a real Triton Inference Server (from the nvidia-pytriton wheel) on CPU."""
from .server import PortInUseError, TritonConfig, TritonServer, TritonStartError

__all__ = ["PortInUseError", "TritonConfig", "TritonServer", "TritonStartError"]
