"""The model: the backbone registry, the image encoder, the decoder interface and its registry (the LSTM), the loss."""
