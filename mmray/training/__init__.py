"""Contrastive training on Ray Train: data and feature caching, the worker loop, evaluation."""
