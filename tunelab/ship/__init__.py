"""Shipping a rung with guarantees: calibrated confidence, a cheap-first cascade, ONNX export gated on parity."""
