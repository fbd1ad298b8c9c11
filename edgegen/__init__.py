"""edgegen: on-device LLM generation (ONNX Runtime and OpenVINO behind one interface)."""

__version__ = "0.1.0"
