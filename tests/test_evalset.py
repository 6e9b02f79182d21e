"""Held-out queries from hand-made items (clothing and groceries): texts, facets and graded relevance."""
from __future__ import annotations

import json

from mmray.config import CaptionConfig
from mmray.evalset import build_queries, grade_item, item_facets, relevance_matrix


def _item(id_, category, gender, color, materials=None):
    attrs = json.dumps({"material": materials}) if materials is not None else None
    return {"id": id_, "category": category, "gender": gender, "color": color, "attributes_json": attrs}


ITEMS = [
    _item("a", "Women/Tops/Jackets", "Women", "Blue", ["Wool", "Cotton"]),
    _item("b", "Women/Tops/Jackets", "Women", "Red", ["Wool"]),
    _item("c", "Men/Tops/Jackets", "Men", "Blue"),
    _item("d", "Gear/Bags", "", "Black", ["Nylon"]),
    _item("e", "Gear/Bags", "Unisex", "", ["Polyester", "Nylon"]),  # adds no new query (no colour; nylon seen)
    _item("f", "", "Women", "Blue", ["Wool"]),  # no category: garment "item" -> no queries, never relevant
    _item("g", "Men/Tops/Hoodies & Sweatshirts", "Men", "Gray", ["Fleece"]),
]


def test_item_facets():
    assert item_facets(ITEMS[0]) == {"noun": "jacket", "gender": "women", "color": "blue",
                                     "attributes": {"material": {"wool", "cotton"}}}
    assert item_facets(ITEMS[2])["attributes"] == {}  # attributes_json None
    assert item_facets(ITEMS[6])["noun"] == "hoodie"


def test_build_queries_texts_and_graded_relevance():
    queries = build_queries(ITEMS)
    got = {q.text: q.relevance for q in queries}
    assert [q.text for q in queries] == [
        "blue jacket for women", "jacket for women made of cotton",  # a (first material alphabetically)
        "red jacket for women", "jacket for women made of wool",      # b
        "blue jacket for men",                                         # c
        "black bag", "bag made of nylon",                              # d: gear, no gender words
        "gray hoodie for men", "hoodie for men made of fleece",        # g
    ]
    assert got == {
        # 2 = all named facets match; 1 = garment and gender match, colour/material differs
        "blue jacket for women": {"a": 2, "b": 1},
        "jacket for women made of cotton": {"a": 2, "b": 1},
        "red jacket for women": {"a": 1, "b": 2},
        "jacket for women made of wool": {"a": 2, "b": 2},
        "blue jacket for men": {"c": 2},
        "black bag": {"d": 2, "e": 1},          # no gender in the query: any gender's bag counts
        "bag made of nylon": {"d": 2, "e": 2},
        "gray hoodie for men": {"g": 2},
        "hoodie for men made of fleece": {"g": 2},
    }
    q = queries[0]
    assert q.facets == {"noun": "jacket", "gender": "women", "color": "blue"}
    assert queries[6].facets == {"noun": "bag", "gender": "", "material": "nylon"}


def test_grade_item_rules():
    blue_women_jacket = {"noun": "jacket", "gender": "women", "color": "blue"}
    assert grade_item(blue_women_jacket, item_facets(ITEMS[0])) == 2
    assert grade_item(blue_women_jacket, item_facets(ITEMS[1])) == 1
    assert grade_item(blue_women_jacket, item_facets(ITEMS[2])) == 0  # men's
    assert grade_item(blue_women_jacket, item_facets(ITEMS[3])) == 0  # another garment


def test_relevance_matrix_follows_item_order():
    queries = build_queries(ITEMS[:3])
    ids = ["c", "b", "a"]
    rel = relevance_matrix(queries, ids)
    assert rel.dtype.kind == "i"
    assert [q.text for q in queries] == ["blue jacket for women", "jacket for women made of cotton",
                                         "red jacket for women", "jacket for women made of wool",
                                         "blue jacket for men"]
    assert rel.tolist() == [[0, 1, 2], [0, 1, 2], [0, 2, 1], [0, 2, 2], [2, 0, 0]]


def test_no_queries_for_items_without_garment():
    assert build_queries([_item("x", "", "Men", "Blue", ["Wool"])]) == []


def _grocery(id_, category, attributes, color=""):
    return {"id": id_, "category": category, "gender": "", "color": color, "attributes_json": json.dumps(attributes)}


GROCERY = [  # no colour, no audience: the facets are the category and any attribute
    _grocery("a1", "Fruit/Apples", {"origin": ["Spain"], "size": ["1 kg"]}),
    _grocery("a2", "Fruit/Apples", {"origin": ["Italy"], "size": ["1 kg"]}),
    _grocery("a3", "Fruit/Apples", {"origin": ["Spain"]}),
    _grocery("b1", "Fruit/Bananas", {"origin": ["Ecuador"]}),
    _grocery("m1", "Dairy/Milk", {}),                # no attribute: the bare noun query
    _grocery("m2", "Dairy/Milk", {"size": ["1 l"]}),  # no origin (the widest attribute): the bare noun query
]


def test_grocery_queries_come_from_the_widest_attribute():
    queries = build_queries(GROCERY)
    # origin is on 4 items, size on 3: origin writes the queries, phrased "{value} {name}" by default
    assert {q.text: q.relevance for q in queries} == {
        "apple spain origin": {"a1": 2, "a2": 1, "a3": 2},  # another origin: noun only, grade 1
        "apple italy origin": {"a1": 1, "a2": 2, "a3": 1},
        "banana ecuador origin": {"b1": 2},
        "milk": {"m1": 2, "m2": 2},
    }
    assert queries[0].facets == {"noun": "apple", "gender": "", "origin": "spain"}
    assert queries[-1].facets == {"noun": "milk", "gender": ""}


def test_grocery_queries_follow_the_caption_config():
    cfg = CaptionConfig(query_attributes=["size"], attribute_phrases={"size": "in a {value} pack"})
    assert {q.text: q.relevance for q in build_queries(GROCERY, cfg)} == {
        "apple in a 1 kg pack": {"a1": 2, "a2": 2, "a3": 1},
        "apple": {"a1": 2, "a2": 2, "a3": 2},  # a3 has no size
        "banana": {"b1": 2},
        "milk": {"m1": 2, "m2": 2},
        "milk in a 1 l pack": {"m1": 1, "m2": 2},
    }


def test_an_attribute_named_like_a_column_is_still_an_attribute():
    items = [_grocery("r", "Fruit/Apples", {"color": ["Red"]}), _grocery("g", "Fruit/Apples", {"color": ["Green"]})]
    assert {q.text: q.relevance for q in build_queries(items)} == {
        "apple red color": {"r": 2, "g": 1}, "apple green color": {"r": 1, "g": 2}}


def test_no_queries_from_an_empty_corpus():
    assert build_queries([]) == []
