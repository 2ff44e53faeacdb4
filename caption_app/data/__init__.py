"""Data: the TFRecord schema, the manifest, the vocabulary, bounded decoding of image bytes, the tf.data pipeline."""
