"""Inference: the loaded captioner (built once from a run dir or an export), the decoding strategies, and images from outside."""
