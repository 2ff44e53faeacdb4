"""Evaluation: perplexity and caption metrics of a checkpoint, once, and the HTML report."""
