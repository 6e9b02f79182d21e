"""BM25 lexical index over titles, descriptions and attributes (bm25s), saved beside the vectors."""
from __future__ import annotations

import numpy as np


class LexicalIndex:
    """BM25 scores for a query over every indexed row (rows in index order)."""

    def __init__(self, retriever):
        self.retriever = retriever

    @classmethod
    def build(cls, texts: list[str]) -> "LexicalIndex":
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        return cls(retriever)

    def save(self, folder: str) -> None:
        self.retriever.save(folder)

    @classmethod
    def load(cls, folder: str) -> "LexicalIndex":
        import bm25s

        return cls(bm25s.BM25.load(folder))

    def scores(self, query: str, mask: np.ndarray | None = None) -> np.ndarray:
        """(N,) BM25 scores; rows outside `mask` get -inf. All zeros when no query term is known."""
        import bm25s

        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        s = self.retriever.get_scores(tokens) if tokens else np.zeros(self.retriever.scores["num_docs"])
        s = np.asarray(s, dtype=np.float32)
        return s if mask is None else np.where(mask, s, -np.inf)
