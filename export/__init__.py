"""Export: wraps what caption_app.inference offers into a TF Serving SavedModel (signatures, assets, warmup) or a LiteRT package (export/litert.py and its runner); never imported by caption_app."""
