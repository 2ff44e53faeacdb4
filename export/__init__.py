"""Export: wraps what caption_app.inference offers into a TF Serving SavedModel (signatures, assets, warmup); never imported by caption_app."""
