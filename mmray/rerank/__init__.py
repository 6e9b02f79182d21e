"""Reranking the top candidates: small fusion heads over the dual encoder's tower features (`mmray.rerank.heads`)."""
