"""Catalog: schema, readers (JSONL, Parquet, CSV), row validation, text cleaning, captions, split, image refs."""
from __future__ import annotations

import collections
import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LUMA_CATALOG, luma_rows, write_csv, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from mmray.catalog import (
    INDEX_META_COLUMNS,
    ITEM_SCHEMA,
    RECORD_SCHEMA,
    TRAIN_COLUMNS,
    CatalogError,
    assign_split,
    build_captions,
    catalog_folder,
    category_noun,
    clean_text,
    iter_raw_rows,
    list_catalog_files,
    normalize_row,
    resolve_image_ref,
)
from mmray.catalog.readers import RAW_PREVIEW_CHARS
from mmray.catalog.text import _clean_text_full
from mmray.config import CaptionConfig, DataConfig, load_config
from mmray.images import ImageRejected

CFG = DataConfig()


def base_row(**changes) -> dict:
    row = {"id": "MJ12-Blue", "product_id": "MJ12", "title": "Proteus Fitness Jackshirt",
           "description": "Part jacket. Part shirt.\n- Zip pocket.", "category": "Men/Tops/Jackets",
           "gender": "Men", "color": "Blue", "sizes": ["S", "M"], "tags": ["new"],
           "attributes": {"material": ["Cotton", "Polyester", "Wool"], "climate": ["Cool"], "activity": ["Gym"]},
           "price": 45.0, "images": ["images/mj12-blue.jpg"]}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


def norm(row: dict, **cfg) -> dict:
    return normalize_row(row, DataConfig(**cfg))


# --------------------------------------------------------------------------- clean_text


@pytest.mark.parametrize("value, expected", [
    (None, ("", False)),
    (5, ("5", False)),
    ("  plain   text  ", ("plain text", False)),
    ("  a   b \n\n c ", ("a b\nc", False)),
    ("Tom &amp; Jerry", ("Tom & Jerry", False)),
    ("\ufb01ne \uff46\uff55\uff4c\uff4c", ("fine full", False)),  # NFKC: ligature and full-width letters
    ("a\x00b\x07c", ("a b c", False)),
    ("Hello<br>world", ("Hello\nworld", True)),
    ("<p>Soft <b>cotton</b> tee.</p><ul><li>Machine wash</li><li>Imported</li></ul>",
     ("Soft cotton tee.\n- Machine wash\n- Imported", True)),
    ("<style>.x{color:red}</style>Hi", ("Hi", True)),
    ("Good<SCRIPT type='text/javascript'>document.write('<b>evil</b>')</SCRIPT>", ("Good", True)),
    ("Safe<script>alert(1)", ("Safe", True)),  # unclosed script: the rest is dropped
    ("<div>-</div>", ("", True)),
    ("5 < 6", ("5 < 6", False)),
])
def test_clean_text(value, expected):
    assert clean_text(value) == expected


def test_clean_text_strips_entity_escaped_markup():
    text, had_html = clean_text("&lt;p&gt;Warm&lt;/p&gt;&lt;script&gt;steal()&lt;/script&gt;")
    assert (text, had_html) == ("Warm", True)


def test_clean_text_cuts_to_max_chars():
    assert clean_text("x" * 50, 30) == ("x" * 30, False)


_FRAGMENTS = ["a", "Tee", " ", "  ", "-", "&lt;", "&amp", "&#39;", "&", "<p>", "</b>", "<", "5 > 3", "\t", "\n",
              "\r\n", "\x00", "\x0b", "\x7f", "\u00e9", "\uff21", "\u00a0", "\ufb01"]


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=8).map("".join), st.integers(1, 40))
def test_clean_text_fast_path_agrees_with_the_full_path(text, max_chars):
    # clean_text returns already-clean ASCII as it is; that must be exactly what the full path gives
    assert clean_text(text, max_chars) == _clean_text_full(text, max_chars)


# --------------------------------------------------------------------------- normalize_row


def test_normalize_good_row():
    rec = norm(base_row())
    assert rec["status"] == "ok" and rec["reason"] == ""
    assert rec["id"] == "MJ12-Blue" and rec["product_id"] == "MJ12"
    assert rec["title"] == "Proteus Fitness Jackshirt"
    assert rec["description"] == "Part jacket. Part shirt.\n- Zip pocket."
    assert rec["sizes"] == ["S", "M"] and rec["tags"] == ["new"]
    assert json.loads(rec["attributes_json"]) == {"material": ["Cotton", "Polyester", "Wool"],
                                                  "climate": ["Cool"], "activity": ["Gym"]}
    assert rec["price"] == 45.0
    assert rec["image_refs"] == ["images/mj12-blue.jpg"]
    assert rec["unknown_columns"] == [] and rec["html_stripped"] is False
    assert rec["split"] in ("train", "test")
    assert rec["text"] == ("Proteus Fitness Jackshirt. Men Blue jacket. Men > Tops > Jackets. activity: Gym. "
                           "climate: Cool. material: Cotton, Polyester, Wool. Part jacket. Part shirt.\n- Zip pocket.")


def test_product_id_defaults_to_id_and_numeric_ids_become_strings():
    rec = norm(base_row(id=" 123 ", product_id=...))
    assert (rec["id"], rec["product_id"]) == ("123", "123")
    rec = norm(base_row(id=123, product_id=77.0))
    assert (rec["status"], rec["id"], rec["product_id"]) == ("ok", "123", "77.0")
    assert norm(base_row(id=4.0))["id"] == "4"


@pytest.mark.parametrize("row_id", [..., None, "", "   ", float("nan"), True])
def test_missing_id(row_id):
    rec = norm(base_row(id=row_id))
    assert (rec["status"], rec["reason"]) == ("quarantined", "missing_id")


@pytest.mark.parametrize("title", [..., None, "", "   ", "<p> </p>", "<script>Buy now</script>"])
def test_empty_title(title):
    rec = norm(base_row(title=title))
    assert (rec["status"], rec["reason"]) == ("quarantined", "empty_title")


@pytest.mark.parametrize("price", [-0.01, -5, float("nan"), float("inf"), "abc", [1]])
def test_invalid_price(price):
    rec = norm(base_row(price=price))
    assert (rec["status"], rec["reason"]) == ("quarantined", "invalid_price")


@pytest.mark.parametrize("price, expected", [(0, 0.0), ("12.5", 12.5), (None, None), ("", None), (..., None)])
def test_valid_or_absent_price(price, expected):
    rec = norm(base_row(price=price))
    assert rec["status"] == "ok"
    assert math.isnan(rec["price"]) if expected is None else rec["price"] == expected


@pytest.mark.parametrize("images", [..., None, [], "", [""], ["  "], [None], [3], {"a": 1}])
def test_no_images(images):
    rec = norm(base_row(images=images))
    assert (rec["status"], rec["reason"]) == ("quarantined", "no_images")


@pytest.mark.parametrize("images", [..., None, [], "", "  "])
def test_text_only_rows_are_kept_when_images_are_not_required(images):
    rec = norm(base_row(images=images), require_images=False)
    assert rec["status"] == "ok" and rec["image_refs"] == [] and rec["captions"] and rec["text"]
    for bad in ([""], [None], [3], {"a": 1}):  # a malformed list is still refused
        assert norm(base_row(images=bad), require_images=False)["reason"] == "no_images"


def test_images_single_string_and_cap():
    assert norm(base_row(images=" images/a.jpg "))["image_refs"] == ["images/a.jpg"]
    rec = norm(base_row(images=[f"i{n}.jpg" for n in range(5)]), max_images_per_item=2)
    assert rec["status"] == "ok" and rec["image_refs"] == ["i0.jpg", "i1.jpg"]


@pytest.mark.parametrize("field, value", [("sizes", "S,M"), ("tags", {"a": 1}), ("attributes", ["Wool"]),
                                          ("attributes", "material=Wool")])
def test_invalid_field_types(field, value):
    rec = norm(base_row(**{field: value}))
    assert (rec["status"], rec["reason"]) == ("quarantined", "invalid_field")
    assert field in rec["detail"]


def test_html_and_script_in_description_are_stripped_and_row_kept():
    rec = norm(base_row(description="<p>Warm <b>wool</b>.</p><script>document.location='http://evil'</script>"
                                    "<ul><li>Zip</li></ul>", title="<b>Proteus</b> &amp; Co"))
    assert rec["status"] == "ok"
    assert rec["description"] == "Warm wool.\n- Zip"
    assert rec["title"] == "Proteus & Co"
    assert rec["html_stripped"] is True
    assert "evil" not in rec["text"] and "script" not in rec["text"]
    assert all("evil" not in c and "<" not in c for c in rec["captions"])


def test_description_is_cut_to_max_text_chars():
    rec = norm(base_row(description="<p>abcdefghij   </p>" * 30), max_text_chars=100)
    assert rec["description"] == "\n".join(["abcdefghij"] * 9) + "\na"


def test_unknown_columns_kept_by_default():
    rec = norm(base_row(warehouse="B7", _internal=1))
    assert rec["status"] == "ok"
    assert rec["unknown_columns"] == ["_internal", "warehouse"]
    assert "warehouse" not in rec


def test_unknown_columns_quarantined_when_configured():
    rec = norm(base_row(warehouse="B7"), unknown_columns="quarantine")
    assert (rec["status"], rec["reason"]) == ("quarantined", "unknown_columns")
    assert "warehouse" in rec["detail"]
    assert norm(base_row(), unknown_columns="quarantine")["status"] == "ok"


def test_attribute_values_are_cleaned():
    rec = norm(base_row(attributes={" material ": "Wool", "style": [None, "", "<i>Casual</i>"], "empty": None}))
    assert rec["status"] == "ok"
    assert json.loads(rec["attributes_json"]) == {"material": ["Wool"], "style": ["Casual"]}


# --------------------------------------------------------------------------- readers


def _rows_for_readers() -> list[dict]:
    return [
        base_row(),
        {"id": "B-1", "title": "Plain tote", "images": ["images/b1.jpg", "images/b1_back.jpg"],
         "attributes": {"pattern": ["Solid"]}},
        {"id": "C-1", "product_id": "C", "title": "Café <b>mug</b>", "description": "<p>Holds 300&nbsp;ml</p>",
         "category": "Gear/Home", "gender": "Unisex", "color": "White", "sizes": [], "tags": ["kitchen", "gift"],
         "attributes": {"material": ["Ceramic"], "features": ["Dishwasher safe"]}, "price": 0,
         "images": ["images/c1.png"]},
    ]


def _normalized(path, cfg: DataConfig = CFG) -> list[dict]:
    out = []
    for _line, row, _raw, error in iter_raw_rows(str(path)):
        assert error is None, error
        rec = normalize_row(row, cfg)
        rec["price"] = None if math.isnan(rec["price"]) else rec["price"]
        out.append(rec)
    return out


def test_readers_agree_jsonl_parquet_csv(tmp_path):
    rows = _rows_for_readers()
    write_jsonl(tmp_path / "c.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")  # attributes inferred as a struct
    map_type = pa.map_(pa.string(), pa.list_(pa.string()))
    table = pa.Table.from_pylist(rows).set_column(
        9, "attributes", pa.array([list(r.get("attributes", {}).items()) for r in rows], map_type))
    assert table.schema.names[9] == "attributes"
    pq.write_table(table, tmp_path / "m.parquet")  # the schema's "map string -> list[string]"
    write_csv(tmp_path / "c.csv", rows)

    expected = _normalized(tmp_path / "c.jsonl")
    assert [r["status"] for r in expected] == ["ok", "ok", "ok"]
    assert [r["id"] for r in expected] == ["MJ12-Blue", "B-1", "C-1"]
    assert [r["product_id"] for r in expected] == ["MJ12", "B-1", "C"]
    assert expected[1]["image_refs"] == ["images/b1.jpg", "images/b1_back.jpg"]
    assert expected[1]["price"] is None and expected[2]["price"] == 0.0
    assert (expected[2]["title"], expected[2]["description"]) == ("Café mug", "Holds 300 ml")
    assert json.loads(expected[1]["attributes_json"]) == {"pattern": ["Solid"]}
    for other in ("c.parquet", "m.parquet", "c.csv"):
        assert _normalized(tmp_path / other) == expected, other


def test_csv_and_jsonl_with_byte_order_mark(tmp_path):
    rows = _rows_for_readers()
    write_csv(tmp_path / "plain.csv", rows)
    write_csv(tmp_path / "bom.csv", rows, bom=True)
    assert (tmp_path / "bom.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    assert _normalized(tmp_path / "bom.csv") == _normalized(tmp_path / "plain.csv")
    write_jsonl(tmp_path / "plain.jsonl", rows)
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "plain.jsonl").read_bytes())
    assert _normalized(tmp_path / "bom.jsonl") == _normalized(tmp_path / "plain.jsonl")


def test_jsonl_bad_lines_do_not_stop_the_file(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"id": "a", "title": "A", "images": ["a.jpg"]},
        b"   ",
        b'{"id": "b", "title": ',
        b"[1, 2]",
        b'{"id": "c", "title": "caf\xe9", "images": ["c.jpg"]}',
        {"id": "d", "title": "D", "images": ["d.jpg"]},
    ])
    got = [(n, row["id"] if row else None, error.split(":")[0] if error else None)
           for n, row, _raw, error in iter_raw_rows(str(path))]
    assert got == [(1, "a", None), (3, None, "invalid_json"), (4, None, "invalid_json"),
                   (5, None, "invalid_utf8"), (6, "d", None)]
    raws = {n: raw for n, _row, raw, _error in iter_raw_rows(str(path))}
    assert raws[5] == '{"id": "c", "title": "caf\ufffd", "images": ["c.jpg"]}'  # kept, readable, for the quarantine


def test_csv_bad_rows_are_marked_alone(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"id,title,images,price\n"
                     b"a,Alpha,a.jpg|a2.jpg,3\n"
                     b"b,Caf\xe9,b.jpg,4\n"
                     b"c,Gamma,c.jpg,5,extra\n"
                     b'd,"Delta, the mug","[""d.jpg""]",\n')
    got = list(iter_raw_rows(str(path)))
    assert [(n, error.split(":")[0] if error else None) for n, _row, _raw, error in got] == [
        (1, None), (2, "invalid_utf8"), (3, "invalid_csv"), (4, None)]
    assert got[0][1] == {"id": "a", "title": "Alpha", "images": ["a.jpg", "a2.jpg"], "price": 3.0}
    assert got[3][1] == {"id": "d", "title": "Delta, the mug", "images": ["d.jpg"], "price": None}


def test_list_catalog_files(tmp_path):
    with pytest.raises(CatalogError, match="catalog path does not exist"):
        list_catalog_files(str(tmp_path / "absent.jsonl"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(CatalogError, match="no catalog files"):
        list_catalog_files(str(tmp_path / "empty"))
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(CatalogError, match="unsupported catalog file type"):
        list_catalog_files(str(tmp_path / "c.txt"))
    folder = tmp_path / "cat"
    for name in ("b.parquet", "a.jsonl", "sub/c.csv", "images/x.jpg", "README.md"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("")
    assert list_catalog_files(str(folder)) == [str(folder / "a.jsonl"), str(folder / "b.parquet"),
                                               str(folder / "sub" / "c.csv")]
    assert list_catalog_files(str(folder / "a.jsonl")) == [str(folder / "a.jsonl")]


def test_csv_oversized_field_quarantines_its_row_alone(tmp_path):
    # a quoted 200 KB field, spanning lines and holding commas: past csv's own 131072 limit
    long = ("Soft, warm\nand " * 14_000)[:200_000]
    path = write_csv(tmp_path / "c.csv", [{"id": "a", "title": "A", "images": ["a.jpg"]},
                                          {"id": "b", "title": "B", "description": long, "images": ["b.jpg"]},
                                          {"id": "c", "title": "C", "images": ["c.jpg"]}])
    got = list(iter_raw_rows(str(path), max_field_chars=DataConfig().max_field_chars))
    assert [(n, row["id"] if row else None, error.split(":")[0] if error else None) for n, row, _raw, error in got] \
        == [(1, "a", None), (2, None, "field_too_large"), (3, "c", None)]
    assert got[1][3] == "field_too_large: 'description' has 200000 characters > limit 131072"
    assert got[1][2].startswith('{"id": "b"') and len(got[1][2]) == RAW_PREVIEW_CHARS
    assert [r["id"] for _n, r, _raw, _e in iter_raw_rows(str(path))] == ["a", "b", "c"]  # no cap: all parse


# --------------------------------------------------------------------------- schema


def test_column_subsets_are_columns_of_the_stored_items():
    assert ITEM_SCHEMA.names == [*RECORD_SCHEMA.names, "images", "image_sha256", "group"]
    assert set(TRAIN_COLUMNS) <= set(ITEM_SCHEMA.names) and set(INDEX_META_COLUMNS) <= set(ITEM_SCHEMA.names)


# --------------------------------------------------------------------------- image references


def test_catalog_folder(tmp_path):
    (tmp_path / "c.jsonl").write_text("")
    assert catalog_folder(str(tmp_path / "c.jsonl")) == str(tmp_path)
    assert catalog_folder(str(tmp_path) + "/") == str(tmp_path)


@pytest.fixture
def image_root(tmp_path):
    """A catalog folder with one image, links inside and out, and a secret file beside it."""
    root = tmp_path / "cat"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(b"a")
    (tmp_path / "secret.jpg").write_bytes(b"s")
    (root / "images" / "link_out.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "images" / "link_in.jpg").symlink_to(root / "images" / "a.jpg")
    (root / "dir_out").symlink_to(tmp_path)
    return os.path.realpath(root)


ALLOWED = ["s3://shop/", "gs://bucket/photos"]


def refused(ref: str, root: str, allowed=ALLOWED) -> ImageRejected:
    with pytest.raises(ImageRejected) as e:
        resolve_image_ref(ref, root, allowed)
    return e.value


def test_refs_inside_the_root_and_allowed_uris_resolve(image_root):
    a = f"{image_root}/images/a.jpg"
    for ref in ("images/a.jpg", "./images/a.jpg", "images/../images/a.jpg", a, "images/link_in.jpg"):
        assert resolve_image_ref(ref, image_root, ALLOWED) == a, ref
    assert resolve_image_ref("images/absent.jpg", image_root) == f"{image_root}/images/absent.jpg"  # read says missing
    assert resolve_image_ref("images/a.jpg", f"file://{image_root}") == a
    assert resolve_image_ref("s3://shop/x/y.jpg", image_root, ALLOWED) == "s3://shop/x/y.jpg"
    assert resolve_image_ref("S3://shop/y.jpg", image_root, ALLOWED) == "s3://shop/y.jpg"
    assert resolve_image_ref("gs://bucket/photos/p.jpg", image_root, ALLOWED) == "gs://bucket/photos/p.jpg"


@pytest.mark.parametrize("ref, reason", [
    ("../secret.jpg", "image_ref_outside_root"),
    ("images/../../secret.jpg", "image_ref_outside_root"),
    ("/etc/passwd", "image_ref_outside_root"),
    ("images/link_out.jpg", "image_ref_outside_root"),   # a link inside the folder, pointing out
    ("dir_out/secret.jpg", "image_ref_outside_root"),    # a linked folder
    ("file:///etc/passwd", "image_ref_not_allowed"),
    ("FILE:///etc/passwd", "image_ref_not_allowed"),
    ("s3://other/x.jpg", "image_ref_not_allowed"),
    ("s3://shop-evil/x.jpg", "image_ref_not_allowed"),   # a prefix matches whole segments only
    ("gs://bucket/private/x.jpg", "image_ref_not_allowed"),
    ("gs://bucket/photos-2/x.jpg", "image_ref_not_allowed"),
    ("gcs://bucket/photos/x.jpg", "image_ref_not_allowed"),
    ("https://evil.example/x.jpg", "image_ref_not_allowed"),
    ("images/x://y.jpg", "image_ref_not_allowed"),
    ("s3://shop/x.jpg?endpoint_override=http://evil", "image_ref_has_query"),
    ("s3://shop/x.jpg#part", "image_ref_has_query"),
    ("s3://shop/../other/x.jpg", "image_ref_outside_root"),
    ("gs://bucket/photos/%2e%2e/private/x.jpg", "image_ref_outside_root"),
    ("", "image_ref_invalid"),
    ("images/a.jpg\x00.png", "image_ref_invalid"),
])
def test_refused_refs_name_their_reason(image_root, ref, reason):
    assert refused(ref, image_root).reason == reason


def test_a_link_out_of_the_root_says_so(image_root):
    err = refused("images/link_out.jpg", image_root)
    assert "through a symbolic link" in err.detail and "secret.jpg" in err.detail


def test_refs_under_a_remote_root(image_root):
    root = "s3://b/catalog/"
    assert resolve_image_ref("images/a.jpg", root) == "s3://b/catalog/images/a.jpg"
    assert resolve_image_ref("./images/a.jpg", "s3://b/catalog") == "s3://b/catalog/images/a.jpg"
    assert resolve_image_ref("s3://b/catalog/images/a.jpg", root) == "s3://b/catalog/images/a.jpg"
    assert resolve_image_ref("s3://shop/a.jpg", root, ALLOWED) == "s3://shop/a.jpg"
    for ref, reason in [("../other/x.jpg", "image_ref_outside_root"), ("images/../../x.jpg", "image_ref_outside_root"),
                        ("/etc/passwd", "image_ref_outside_root"), (f"{image_root}/images/a.jpg", "image_ref_outside_root"),
                        ("images/a.jpg?endpoint_override=http://evil", "image_ref_has_query"),
                        ("s3://b/catalog-other/x.jpg", "image_ref_not_allowed"), ("s3://b/x.jpg", "image_ref_not_allowed"),
                        ("file:///etc/passwd", "image_ref_not_allowed")]:
        assert refused(ref, root).reason == reason, ref


@pytest.mark.parametrize("prefix", ["file:///data/", "s3://", "shop/images/", "s3://b/x?endpoint_override=y",
                                    "s3://b/../c/", "s3://b/#x"])
def test_allowed_image_uris_must_be_uri_prefixes(prefix):
    with pytest.raises(ValueError, match="is not a URI prefix"):
        DataConfig(allowed_image_uris=[prefix])
    assert DataConfig(allowed_image_uris=["s3://shop-images/", "gs://b/photos"]).allowed_image_uris


# --------------------------------------------------------------------------- captions


@pytest.mark.parametrize("category, noun", [
    ("Men/Tops/Hoodies & Sweatshirts", "hoodie"), ("Women/Tops/Bras & Tanks", "bra"), ("Men/Tops/Tees", "tee"),
    ("Men/Tops/Jackets", "jacket"), ("Men/Bottoms/Pants", "pants"), ("Women/Bottoms/Shorts", "shorts"),
    ("Gear/Bags", "bag"), ("Gear/Watches", "watch"), ("Gear/Fitness Equipment", "fitness gear"),
    ("Women/Dress", "dress"), ("", "item"), ("Training/Video Download", "training video"),
    ("Men/Tops/Tanks", "tank top"),  # Fitness Equipment, Video Download, Tanks: default CaptionConfig.nouns
    # the general rule, any domain
    ("Fruit/Apples", "apple"), ("Fruit/Apple", "apple"), ("Computers/Laptops", "laptop"), ("Living Room/Sofas", "sofa"),
    ("Fruit/Berries", "berry"), ("Storage/Boxes", "box"), ("Eyewear/Glasses", "glasses"), ("Pants", "pants"),
    ("Shorts", "shorts"), ("Leggings", "leggings"), ("Dresses", "dress"), ("Bakery/Cookies", "cookie"),
    ("Vegetables/Tomatoes", "tomato"), ("Kitchen/Knives", "knife"), ("Shoes/Running Shoes", "running shoe"),
    ("Fruit/Citrus", "citrus"), ("Fruit/Kiwis", "kiwi"), ("Cameras/Lenses", "lens"), ("Beds/Mattresses", "mattress"),
    ("Fruit and Vegetables", "fruit"), ("Pets/Aquarium/Tanks", "tank"), ("水果/苹果", "苹果"),
])
def test_category_noun(category, noun):
    assert category_noun(category) == noun


def test_category_noun_overrides_match_the_leaf_or_the_path_end():
    nouns = {"tanks": "fish tank", "tops/tanks": "tank top"}
    assert category_noun("Pets/Tanks", nouns) == "fish tank"
    assert category_noun("Men/Tops/Tanks", nouns) == "tank top"  # the longer key wins
    assert category_noun("Men/Tops/Tanks", {}) == "tank"


CAPTION_FIRST = "a blue jacket for men: Proteus Fitness Jackshirt"
CAPTION_REST = [
    "a blue jacket for men, made of cotton and polyester, for cool weather",
    "Proteus Fitness Jackshirt, blue jacket for men",
    "Proteus Fitness Jackshirt in blue, for cool weather, for gym",
    "photo of a blue jacket for men, for gym, tops",  # the levels above the leaf come last among the facts
    "Proteus Fitness Jackshirt, a blue jacket for men. Part jacket. Part shirt.",
]


def _is_rotation(got: list[str], ref: list[str]) -> bool:
    return any(got == ref[k:] + ref[:k] for k in range(len(ref)))


def test_captions_name_the_facts():
    rec = norm(base_row(), caption=CaptionConfig(num_variants=16))
    assert rec["captions"][0] == CAPTION_FIRST
    assert _is_rotation(rec["captions"][1:], CAPTION_REST)
    rec4 = norm(base_row())  # default: 4 variants, the same order
    assert rec4["captions"] == rec["captions"][:4]
    assert norm(base_row(), caption=CaptionConfig(num_variants=1))["captions"] == [CAPTION_FIRST]


def test_captions_are_deterministic_per_seed():
    a = [norm(base_row(id=f"x{i}"), seed=0)["captions"] for i in range(20)]
    assert a == [norm(base_row(id=f"x{i}"), seed=0)["captions"] for i in range(20)]
    assert len({tuple(c) for c in a}) > 1  # the order varies across items


def test_caption_description_excerpt():
    long = "Ideal for cold-weather training or work outdoors"
    rec = norm(base_row(description=long + "\n- second line"),
               caption=CaptionConfig(num_variants=16, description_chars=20))
    assert "Proteus Fitness Jackshirt, a blue jacket for men. Ideal for" in rec["captions"]
    rec = norm(base_row(), caption=CaptionConfig(num_variants=16, description_chars=0))
    assert len(rec["captions"]) == 5 and not any("Part jacket" in c for c in rec["captions"])


def test_captions_without_optional_facts():
    cfg = CaptionConfig(num_variants=16)
    rec = {"id": "g", "title": "Gift Card", "category": "", "color": "", "gender": "", "description": ""}
    caps = build_captions(rec, {}, cfg, seed=0)
    assert caps[0] == "an item: Gift Card"
    assert sorted(caps[1:]) == sorted(["an item", "Gift Card, item", "Gift Card", "photo of an item"])
    rec.update(color="Orange", category="Men/Tops/Hoodies & Sweatshirts")
    assert build_captions(rec, {}, cfg, seed=0)[0] == "an orange hoodie: Gift Card"


def test_grocery_captions_name_the_noun_and_any_attribute():
    row = {"id": "apl-1", "title": "Pink Lady Apples", "description": "", "category": "Fruit/Apple",
           "attributes": {"origin": ["Spain"], "size": ["1 kg"]}, "images": ["images/apl-1.jpg"]}
    rec = norm(row, caption=CaptionConfig(num_variants=16))
    assert rec["status"] == "ok"
    assert rec["captions"][0] == "an apple: Pink Lady Apples"
    assert _is_rotation(rec["captions"][1:], [
        "an apple, spain origin, 1 kg size", "Pink Lady Apples, apple", "Pink Lady Apples, 1 kg size, fruit",
        "photo of an apple, fruit"])
    assert rec["text"] == "Pink Lady Apples. apple. Fruit > Apple. origin: Spain. size: 1 kg"
    phrased = CaptionConfig(num_variants=16, attribute_phrases={"origin": "from {value}"}, attributes=["origin"])
    rec = norm(row, caption=phrased)
    assert "an apple, from spain, fruit" in rec["captions"]
    assert not any("1 kg" in c for c in rec["captions"]) and "size" not in rec["text"]


def test_one_image_no_attributes_still_gets_captions():
    rec = norm({"id": "b", "title": "Bananas", "category": "Fruit/Bananas", "images": ["images/b.jpg"]})
    assert rec["status"] == "ok" and len(rec["captions"]) == 4
    assert rec["captions"][0] == "a banana: Bananas" and all(c for c in rec["captions"])


@pytest.mark.parametrize("phrase", ["{x} {name}", "no value", "{value} {0}"])
def test_attribute_phrases_must_name_the_value(phrase):
    with pytest.raises(ValueError, match="phrase template|does not name"):
        CaptionConfig(attribute_phrase=phrase)
    with pytest.raises(ValueError, match="phrase template|does not name"):
        CaptionConfig(attribute_phrases={"origin": phrase})


# --------------------------------------------------------------------------- split


def test_split_is_per_product():
    cfg = DataConfig(holdout_fraction=0.5)
    for p in range(40):
        sides = {norm(base_row(id=f"P{p}-{c}", product_id=f"P{p}"), holdout_fraction=0.5)["split"]
                 for c in ("Red", "Blue", "Green")}
        assert len(sides) == 1
        assert sides == {assign_split(f"P{p}", cfg.holdout_fraction, cfg.seed)}


def test_split_fraction_and_seed():
    products = [f"prod-{i}" for i in range(4000)]
    test_share = sum(assign_split(p, 0.15, 0) == "test" for p in products) / len(products)
    assert 0.12 < test_share < 0.18
    assert all(assign_split(p, 0.0, 0) == "train" for p in products[:500])
    other_seed = [assign_split(p, 0.15, 1) for p in products]
    assert other_seed != [assign_split(p, 0.15, 0) for p in products]


def test_shipped_catalog_rows_are_valid_and_split_by_product():
    cfg = load_config().data
    sides = collections.defaultdict(set)
    n = 0
    for _line, row, _raw, error in iter_raw_rows(str(LUMA_CATALOG)):
        assert error is None
        rec = normalize_row(row, cfg)
        assert rec["status"] == "ok", (rec["id"], rec["reason"])
        sides[rec["product_id"]].add(rec["split"])
        n += 1
    assert n == len(luma_rows()) == 469
    assert all(len(s) == 1 for s in sides.values())
    split_products = collections.Counter(next(iter(s)) for s in sides.values())
    assert split_products["test"] > 0 and split_products["train"] > split_products["test"]
