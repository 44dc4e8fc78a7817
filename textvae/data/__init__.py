"""Corpora, tokenizers and length-bucketed batching for text models."""
