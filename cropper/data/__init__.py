"""Benchmark data: dataset loaders, metrics, crop embeddings and head training."""
