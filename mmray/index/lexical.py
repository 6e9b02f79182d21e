"""BM25 lexical index over titles, descriptions and attributes (bm25s), saved beside the vectors.

Tokens: bm25s's English rule (lower case, words of 2+ letters or digits, English stop words)
for spaced scripts, character bigrams for CJK (`cjk_bigrams`).
"""
from __future__ import annotations

import re

import numpy as np

# Han, kana and Hangul (Lucene's CJKBigramFilter covers the same scripts). bm25s's word rule
# would keep a whole unspaced run as one token ("女士红色夹克" never matches "红色夹克") and drop
# single characters; no Chinese/Japanese segmenter ships offline, so runs become overlapping
# character bigrams, the standard segmenter-free choice, and a lone character stays a unigram.
_CJK = "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_RUN = re.compile(f"[{_CJK}]+")
# bm25s's default pattern, plus single CJK characters (after `_split_cjk` every CJK token is
# one or two characters between spaces; the first branch already takes the bigrams).
_TOKEN_PATTERN = rf"(?u)\b\w\w+\b|[{_CJK}]"


def cjk_bigrams(run: str) -> list[str]:
    """One CJK run -> its overlapping character bigrams ("红色夹克" -> 红色, 色夹, 夹克); one character -> itself."""
    return [run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)]


def _split_cjk(text: str) -> str:
    """Text with every CJK run replaced by its space-separated bigrams; other text untouched."""
    return _CJK_RUN.sub(lambda m: " " + " ".join(cjk_bigrams(m.group())) + " ", text)


def tokenize(texts: list[str], return_ids: bool = True):
    """bm25s.tokenize with CJK bigrams; English text gives exactly bm25s's default tokens."""
    import bm25s

    return bm25s.tokenize([_split_cjk(t) for t in texts], token_pattern=_TOKEN_PATTERN, stopwords="en",
                          show_progress=False, return_ids=return_ids)


class LexicalIndex:
    """BM25 scores for a query over every indexed row (rows in index order)."""

    def __init__(self, retriever):
        self.retriever = retriever

    @classmethod
    def build(cls, texts: list[str]) -> "LexicalIndex":
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(tokenize(texts), show_progress=False)
        return cls(retriever)

    def save(self, folder: str) -> None:
        self.retriever.save(folder)

    @classmethod
    def load(cls, folder: str) -> "LexicalIndex":
        import bm25s

        return cls(bm25s.BM25.load(folder))

    def scores(self, query: str, mask: np.ndarray | None = None) -> np.ndarray:
        """(N,) BM25 scores; rows outside `mask` get -inf. All zeros when no query term is known."""
        tokens = tokenize([query], return_ids=False)[0]
        s = self.retriever.get_scores(tokens) if tokens else np.zeros(self.retriever.scores["num_docs"])
        s = np.asarray(s, dtype=np.float32)
        return s if mask is None else np.where(mask, s, -np.inf)
