"""Counting what a model costs: fvcore FLOPs and parameters (``flops``), FLOPs predicted from channel
counts (``costmodel``), measured latency in PyTorch or onnxruntime (``latency``, ``onnx``)."""
