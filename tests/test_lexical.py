"""BM25 tokens: CJK runs as character bigrams, English exactly as bm25s's default."""
from __future__ import annotations

import json

import bm25s
import numpy as np

from mmray.index.lexical import LexicalIndex, cjk_bigrams, tokenize
from tests.conftest import LUMA_CATALOG

TITLES = ["Chaz Kangeroo Hoodie", "女士红色防风夹克", "黑色瑜伽裤", "Black yoga pants", "男士蓝色短裤", "裙"]


def test_cjk_runs_become_bigrams_and_lone_characters_unigrams():
    assert cjk_bigrams("红色夹克") == ["红色", "色夹", "夹克"] and cjk_bigrams("裙") == ["裙"]
    assert tokenize(["Red 红色夹克, 裙。the jacket"], return_ids=False) == [
        ["red", "红色", "色夹", "夹克", "裙", "jacket"]]


def test_chinese_query_finds_the_chinese_title():
    index = LexicalIndex.build(TITLES)
    for query, want in [("红色夹克", 1), ("女士夹克", 1), ("瑜伽裤", 2), ("蓝色短裤", 4), ("裙", 5)]:
        s = index.scores(query)
        assert int(np.argmax(s)) == want and (s > 0).sum() <= 2, (query, s)
    assert index.scores("yoga pants").argmax() == 3 and index.scores("连衣裙").max() == 0  # no shared bigram


def test_english_tokens_and_scores_unchanged_on_the_luma_catalog(tmp_path):
    rows = [json.loads(line) for line in LUMA_CATALOG.open()]
    texts = [f"{r['title']} {r['description']}" for r in rows]
    assert tokenize(texts, return_ids=False) == bm25s.tokenize(texts, stopwords="en", show_progress=False, return_ids=False)
    before = bm25s.BM25()
    before.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    index = LexicalIndex.build(texts)
    index.save(str(tmp_path))
    loaded = LexicalIndex.load(str(tmp_path))
    for query in ["black yoga pants", "red jacket for women", "hoodie", "the of"]:
        q = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        want = before.get_scores(q) if q else np.zeros(len(texts))
        np.testing.assert_allclose(loaded.scores(query), want, rtol=1e-6, atol=1e-6)
