"""Preprocessing on Ray Data: rows in = rows out + quarantined, each bad row with its reason, and the CLI."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from conftest import (
    LOCAL_CONFIG,
    LUMA_CATALOG,
    ROOT,
    copy_luma_images,
    jpeg_bytes,
    luma_rows,
    write_csv,
    write_jsonl,
)
from PIL import Image

from mmray.catalog import normalize_row
from mmray.config import DataConfig, MmrayConfig, load_config
from mmray.preprocess import (
    ITEM_SCHEMA,
    _write_parquet,
    find_duplicate_groups,
    parse_chunks,
    parse_file,
    process_block,
    process_images,
    run_preprocess,
)
from mmray.storage import ArtifactStore


def config(tmp_path, catalog, *overrides: str):
    return load_config(LOCAL_CONFIG, [f"data.catalog={catalog}", f"storage.root={tmp_path / 'art'}", *overrides])


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------- pure functions (no Ray)


def test_find_duplicate_groups_hand_computed():
    rows = [
        ("a1", "A", ["h1"]),
        ("a2", "A", ["h2"]),
        ("b1", "B", ["h2"]),         # shares h2 with A -> group A
        ("c1", "C", ["h3"]),
        ("e1", "E", ["h3", "h4"]),   # shares h3 with C -> group C
        ("d1", "D", []),             # no images: alone
        ("f1", "F", ["h5"]),         # alone
        ("z1", "Z", ["h8"]),
        ("y1", "Y", ["h8", "h9"]),   # Z - Y - X chained through h8, h9 -> group X (smallest product id)
        ("x1", "X", ["h9"]),
        ("f2", "F", ["h6"]),         # second variant of F, own image: still F
    ]
    assert find_duplicate_groups(rows) == {
        "a1": "A", "a2": "A", "b1": "A", "c1": "C", "e1": "C", "d1": "D", "f1": "F",
        "z1": "X", "y1": "X", "x1": "X", "f2": "F",
    }
    assert find_duplicate_groups([]) == {}


def test_parse_file_accounts_for_every_line(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"id": "a", "title": "A", "images": ["a.jpg"]},
        b"",
        b"{broken",
        {"title": "no id", "images": ["x.jpg"]},
    ])
    table = parse_file(str(path), 3, DataConfig())
    rows = table.to_pylist()
    assert [(r["source"], r["status"], r["reason"]) for r in rows] == [
        ("c.jsonl:1", "ok", ""), ("c.jsonl:3", "quarantined", "invalid_json"),
        ("c.jsonl:4", "quarantined", "missing_id")]
    assert [r["pos"] for r in rows] == [(3 << 32) | 1, (3 << 32) | 3, (3 << 32) | 4]
    assert rows[0]["raw"] == "" and rows[1]["raw"] == "{broken" and "no id" in rows[2]["raw"]


def test_parse_file_csv_oversized_field_quarantines_only_its_row(tmp_path):
    path = write_csv(tmp_path / "c.csv", [{"id": "a", "title": "A", "images": ["a.jpg"]},
                                          {"id": "b", "title": "B", "description": "x" * 200_000, "images": ["b.jpg"]},
                                          {"id": "c", "title": "C", "images": ["c.jpg"]}])
    rows = parse_file(str(path), 0, DataConfig()).to_pylist()
    assert [(r["source"], r["status"], r["reason"]) for r in rows] == [
        ("c.csv:1", "ok", ""), ("c.csv:2", "quarantined", "field_too_large"), ("c.csv:3", "ok", "")]
    assert "'description' has 200000 characters" in rows[1]["detail"]


def test_parse_file_unreadable_file_is_one_quarantined_record(tmp_path):
    bad = tmp_path / "c.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    rows = parse_file(str(bad), 0, DataConfig()).to_pylist()
    assert [(r["source"], r["status"], r["reason"]) for r in rows] == [("c.parquet", "quarantined", "unreadable_file")]


@pytest.mark.parametrize("rows_per_shard,min_chunks,sizes", [
    (4, 1, [4, 4, 2]), (4, 5, [2, 2, 2, 2, 2]), (100, 3, [4, 4, 2]), (100, 1, [10]), (100, 20, [1] * 10)])
def test_parse_chunks_cuts_a_file_into_image_blocks(tmp_path, rows_per_shard, min_chunks, sizes):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": f"i{n}", "title": "T", "images": ["a.jpg"], "price": 1.0} for n in range(10)])
    cfg = DataConfig(rows_per_shard=rows_per_shard)
    chunks = list(parse_chunks(str(path), 1, cfg, min_chunks))
    assert [c.num_rows for c in chunks] == sizes
    assert pa.concat_tables(chunks).equals(parse_file(str(path), 1, cfg))  # in order, nothing lost


def test_process_images_quarantines_later_duplicates(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(40, 30))
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"id": "a", "title": "First", "images": ["a.jpg"], "price": 5.0},
        {"id": "a", "title": "Second", "images": ["a.jpg"], "price": 6.0},
    ])
    cfg = DataConfig()
    records = parse_file(str(path), 0, cfg)
    table = process_images(records, cfg, str(tmp_path), {"a": 1})
    assert table.schema == ITEM_SCHEMA.remove(ITEM_SCHEMA.get_field_index("group"))  # groups come with the shard
    assert table.drop_columns(["status", "reason", "detail", "images", "image_sha256"]).equals(
        records.drop_columns(["status", "reason", "detail"]))  # the text columns pass through as they were
    out = table.to_pylist()
    assert [(r["title"], r["status"], r["reason"]) for r in out] == [
        ("First", "ok", ""), ("Second", "quarantined", "duplicate_id")]
    assert out[0]["image_sha256"] == [hashlib.sha256((tmp_path / "a.jpg").read_bytes()).hexdigest()]
    assert Image.open(io.BytesIO(out[0]["images"][0])).size == (40, 30)
    assert out[1]["images"] == []


def test_process_block_writes_its_ok_rows_as_one_shard(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(40, 30))
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"id": "a", "product_id": "P", "title": "Good", "images": ["a.jpg"]},
        {"id": "b", "product_id": "P", "title": "Bad image", "images": ["b.jpg"]},
        {"id": "c", "product_id": "Q", "title": "Also good", "images": ["a.jpg", "a.jpg"]},
    ])
    cfg = DataConfig()
    records = parse_file(str(path), 2, cfg)
    small = process_block(records, cfg, str(tmp_path), {}, ArtifactStore(str(tmp_path)), str(tmp_path / "items"))
    shard = str(tmp_path / "items" / f"part-{(2 << 32) | 1:016x}.parquet")
    assert "images" not in small.column_names
    assert small.select(["id", "status", "reason", "shard"]).to_pylist() == [
        {"id": "a", "status": "ok", "reason": "", "shard": shard},
        {"id": "b", "status": "quarantined", "reason": "not_an_image", "shard": ""},
        {"id": "c", "status": "ok", "reason": "", "shard": shard}]
    written = pq.read_table(shard)
    assert written.schema == ITEM_SCHEMA
    assert written.select(["id", "group"]).to_pylist() == [{"id": "a", "group": "P"}, {"id": "c", "group": "Q"}]
    assert [len(i) for i in written["images"].to_pylist()] == [1, 2]


def test_text_only_rows_are_written_with_no_images_unless_images_are_required(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(40, 30))
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"id": "a", "title": "Pictured", "images": ["a.jpg"]},
        {"id": "t", "title": "Text only", "images": []},
        {"id": "u", "title": "No images field"},
    ])
    cfg = DataConfig(require_images=False)
    small = process_block(parse_file(str(path), 0, cfg), cfg, str(tmp_path), {}, ArtifactStore(str(tmp_path)),
                          str(tmp_path / "items"))
    assert small["status"].to_pylist() == ["ok", "ok", "ok"]
    written = pq.read_table(str(tmp_path / "items" / f"part-{1:016x}.parquet")).to_pylist()
    assert [(r["id"], len(r["images"]), r["image_sha256"], bool(r["text"])) for r in written] == [
        ("a", 1, [hashlib.sha256((tmp_path / "a.jpg").read_bytes()).hexdigest()], True), ("t", 0, [], True),
        ("u", 0, [], True)]
    assert find_duplicate_groups([(r["id"], r["product_id"], r["image_sha256"]) for r in written]) == {
        "a": "a", "t": "t", "u": "u"}
    required = parse_file(str(path), 0, DataConfig())  # the default: quarantined as before
    assert required.select(["id", "reason"]).to_pylist() == [
        {"id": "a", "reason": ""}, {"id": "t", "reason": "no_images"}, {"id": "u", "reason": "no_images"}]


def test_write_parquet_stores_image_bytes_plain_and_the_rest_compressed(tmp_path):
    table = pa.table({"id": ["a", "b"], "captions": [["x", "y"], ["z"]],
                      "images": [[jpeg_bytes(20, 20)], [jpeg_bytes(30, 10, seed=2)]]})
    _write_parquet(pafs.LocalFileSystem(), str(tmp_path / "sub" / "t.parquet"), table, raw_columns=("images",))
    assert pq.read_table(tmp_path / "sub" / "t.parquet").equals(table)
    meta = pq.ParquetFile(tmp_path / "sub" / "t.parquet").metadata.row_group(0)
    codecs = {meta.column(i).path_in_schema: meta.column(i).compression for i in range(meta.num_columns)}
    assert codecs == {"id": "SNAPPY", "captions.list.element": "SNAPPY", "images.list.element": "UNCOMPRESSED"}


# --------------------------------------------------------------------------- the pipeline


def dataset_dir(tmp_path, name: str = "luma"):
    """The folder of the current version of dataset `name` under the test's storage root."""
    from mmray.storage import dataset_kind

    store = ArtifactStore(str(tmp_path / "art"))
    return tmp_path / "art" / "datasets" / name / store.current(dataset_kind(name))


@pytest.mark.slow
def test_shipped_catalog_end_to_end(tmp_path, ray_session):
    cfg = config(tmp_path, LUMA_CATALOG)
    report = run_preprocess(cfg)
    out = dataset_dir(tmp_path)
    assert report["rows_in"] == 469 and report["rows_out"] == 469 and report["rows_quarantined"] == 0
    assert report["quarantined_by_reason"] == {} and report["duplicate_ids"] == 0
    catalog = luma_rows()
    assert report["images_out"] == sum(len(r["images"]) for r in catalog)
    assert report["split"]["train"] + report["split"]["test"] == 469 and report["split"]["test"] > 0
    assert report["output"] == str(out)
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert read_jsonl(out / "quarantine.jsonl") == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert MmrayConfig.model_validate(manifest["config"]) == cfg  # the version carries the config that made it
    assert set(manifest["files"]) == {"report.json", "quarantine.jsonl", *(f"items/{p}" for p in os.listdir(out / "items"))}
    assert sorted(os.listdir(out.parent)) == sorted(["current.json", out.name])

    items = pq.read_table(out / "items").to_pylist()
    assert sorted(r["id"] for r in items) == sorted(r["id"] for r in catalog)
    by_id = {r["id"]: r for r in catalog}
    sides: dict[str, set] = {}
    for item in items:
        src = by_id[item["id"]]
        assert item["status"] == "ok" and item["product_id"] == src["product_id"]
        assert len(item["images"]) == len(item["image_sha256"]) == len(src["images"])
        sides.setdefault(item["product_id"], set()).add(item["split"])
        assert len(item["captions"]) == 4 and item["group"]
    assert all(len(s) == 1 for s in sides.values())  # every variant of a product on the same side
    # the written groups are the union-find over the written items (the merged shards were rewritten)
    expect = find_duplicate_groups([(i["id"], i["product_id"], i["image_sha256"]) for i in items])
    assert {i["id"]: i["group"] for i in items} == expect
    assert report["duplicate_image_items"] == sum(1 for i in items if i["group"] != i["product_id"]) > 0
    assert report["shards"] == len(os.listdir(out / "items")) >= 2
    first = next(i for i in items if i["id"] == "MH01-Gray")
    assert first["image_sha256"][0] == hashlib.sha256(
        (LUMA_CATALOG.parent / by_id["MH01-Gray"]["images"][0]).read_bytes()).hexdigest()
    im = Image.open(io.BytesIO(first["images"][0]))
    assert im.format == "JPEG" and max(im.size) <= 256


def _bad_catalog(tmp_path, bad_images) -> tuple[list, dict]:
    """A few shipped rows plus one bad row of each kind; returns (lines, expected reason by id or source)."""
    good = luma_rows(4)
    copy_luma_images(good, tmp_path)
    images = tmp_path / "images"
    for name, data in bad_images.items():
        (images / name).write_bytes(data)
    big = jpeg_bytes(600, 600, seed=5, quality=95)
    assert len(big) > 200_000
    (images / "huge.jpg").write_bytes(big)

    t = dict(good[0], product_id="T")  # a usable template (image: images/mh01-black_main.jpg)
    no_id = {k: v for k, v in t.items() if k != "id"}
    latin1 = json.dumps(dict(t, id="BAD-latin1", title="Caf\u00e9"), ensure_ascii=False).encode("utf-8")
    assert latin1.count(b"Caf\xc3\xa9") == 1
    latin1 = latin1.replace(b"Caf\xc3\xa9", b"Caf\xe9")  # Latin-1 bytes in a UTF-8 file
    nan_price = json.dumps(dict(t, id="BAD-nan-price", price=float("nan")))
    assert "NaN" in nan_price
    lines = [
        *good,                                                                   # 1-4
        dict(t, id="OK-html", product_id="OKH",                                  # 5
             description="<p>Warm <b>fleece</b>.</p><script>fetch('http://evil.example/x')</script>"),
        dict(t, id="OK-extra", product_id="OKX", warehouse="B7"),                # 6
        no_id,                                                                   # 7
        dict(t, id="MH01-Black", title="Dup of line 1"),                         # 8
        dict(t, id="BAD-missing-image", images=["images/does_not_exist.jpg"]),   # 9
        dict(t, id="BAD-second-image", images=[t["images"][0], "images/gone.jpg"]),  # 10
        dict(t, id="BAD-truncated", images=["images/truncated.jpg"]),            # 11
        dict(t, id="BAD-not-image", images=["images/not_image.jpg"]),            # 12
        dict(t, id="BAD-bomb", images=["images/bomb.png"]),                      # 13
        dict(t, id="BAD-bomb-huge", images=["images/bomb_huge.png"]),            # 14
        dict(t, id="BAD-oversized", images=["images/huge.jpg"]),                 # 15
        latin1,                                                                  # 16
        b"",                                                                     # (blank: not a row)
        dict(t, id="BAD-empty-title", title=""),                                 # 18
        dict(t, id="BAD-negative-price", price=-5),                              # 19
        nan_price,                                                               # 20
        b'{"id": "BAD-json", "title": ',                                         # 21
        dict(t, id="BAD-no-images", images=[]),                                  # 22
    ]
    expected = {
        "catalog.jsonl:7": "missing_id",
        "catalog.jsonl:8": "duplicate_id",
        "BAD-missing-image": "missing_image",
        "BAD-second-image": "missing_image",
        "BAD-truncated": "truncated_image",
        "BAD-not-image": "not_an_image",
        "BAD-bomb": "too_many_pixels",
        "BAD-bomb-huge": "too_many_pixels",
        "BAD-oversized": "file_too_large",
        "catalog.jsonl:16": "invalid_utf8",
        "BAD-empty-title": "empty_title",
        "BAD-negative-price": "invalid_price",
        "BAD-nan-price": "invalid_price",
        "catalog.jsonl:21": "invalid_json",
        "BAD-no-images": "no_images",
    }
    return lines, expected


@pytest.mark.slow
def test_bad_rows_are_quarantined_with_reasons(tmp_path, ray_session, bad_images):
    lines, expected = _bad_catalog(tmp_path, bad_images)
    catalog = write_jsonl(tmp_path / "catalog.jsonl", lines)
    cfg = config(tmp_path, catalog, "data.name=bad", "data.max_image_bytes=200000")
    report = run_preprocess(cfg)
    out = dataset_dir(tmp_path, "bad")

    assert report["rows_in"] == 21
    assert report["rows_out"] == 6
    assert report["rows_quarantined"] == 15
    assert report["rows_in"] == report["rows_out"] + report["rows_quarantined"]
    assert report["quarantined_by_reason"] == {
        "missing_id": 1, "duplicate_id": 1, "missing_image": 2, "truncated_image": 1, "not_an_image": 1,
        "too_many_pixels": 2, "file_too_large": 1, "invalid_utf8": 1, "empty_title": 1, "invalid_price": 2,
        "invalid_json": 1, "no_images": 1}
    assert report["duplicate_ids"] == 1
    assert report["html_stripped_rows"] == 1
    assert report["unknown_columns"] == {"warehouse": 1}
    assert report["images_out"] == 1 + 3 + 1 + 3 + 1 + 1
    assert report["groups"] == 2 and report["duplicate_image_items"] == 2  # OKH, OKX share MH01-Black's image

    quarantine = read_jsonl(out / "quarantine.jsonl")
    got = {}
    for q in quarantine:
        key = q["source"] if q["reason"] in ("missing_id", "duplicate_id", "invalid_utf8", "invalid_json") \
            else q["id"]
        got[key] = q["reason"]
        assert q["status"] == "quarantined" and q["detail"], q
        assert "images" not in q and "captions" not in q
    assert got == expected
    by_reason = {q["reason"]: q for q in quarantine}
    assert "does_not_exist.jpg" in by_reason["missing_image"]["detail"] or "gone.jpg" in by_reason[
        "missing_image"]["detail"]
    assert "Caf\ufffd" in by_reason["invalid_utf8"]["raw"]
    assert by_reason["duplicate_id"]["id"] == "MH01-Black" and by_reason["duplicate_id"]["title"] == "Dup of line 1"
    assert pq.read_table(out / "quarantine").num_rows == 15
    assert json.loads((out / "report.json").read_text())["rows_quarantined"] == 15

    items = {r["id"]: r for r in pq.read_table(out / "items").to_pylist()}
    assert sorted(items) == ["MH01-Black", "MH01-Gray", "MH01-Orange", "MH02-Black", "OK-extra", "OK-html"]
    assert items["MH01-Black"]["title"] == "Chaz Kangeroo Hoodie"  # the first row with the id wins
    assert items["OK-html"]["description"] == "Warm fleece." and items["OK-html"]["html_stripped"]
    assert "evil" not in items["OK-html"]["text"] and "fetch" not in items["OK-html"]["text"]
    assert items["OK-extra"]["unknown_columns"] == ["warehouse"]
    assert {i: r["group"] for i, r in items.items()} == {
        "MH01-Black": "MH01", "MH01-Gray": "MH01", "MH01-Orange": "MH01", "MH02-Black": "MH02",
        "OK-extra": "MH01", "OK-html": "MH01"}


@pytest.mark.slow
def test_image_refs_outside_the_catalog_are_quarantined(tmp_path, ray_session):
    folder = tmp_path / "cat"
    good = luma_rows(3)
    copy_luma_images(good, folder)
    secret = tmp_path / "secret.jpg"  # a real image beside the catalog folder: only the confinement stops it
    secret.write_bytes(jpeg_bytes(40, 30))
    (folder / "images" / "link.jpg").symlink_to(secret)
    t = dict(good[0], product_id="T")
    lines = [
        *good,
        dict(t, id="OK-absolute-inside", images=[str(folder / t["images"][0])]),
        dict(t, id="BAD-dotdot", images=["../secret.jpg"]),
        dict(t, id="BAD-absolute", images=[str(secret)]),
        dict(t, id="BAD-symlink", images=["images/link.jpg"]),
        dict(t, id="BAD-second-ref", images=[t["images"][0], "images/../../secret.jpg"]),
        dict(t, id="BAD-file-uri", images=[f"file://{secret}"]),
        dict(t, id="BAD-other-bucket", images=["s3://other/x.jpg"]),
        dict(t, id="BAD-query", images=["s3://shop/x.jpg?endpoint_override=http://evil.example"]),
        dict(t, id="BAD-nul", images=["images/a\x00.jpg"]),
    ]
    catalog = write_jsonl(folder / "catalog.jsonl", lines)
    report = run_preprocess(config(tmp_path, catalog, "data.name=refs", 'data.allowed_image_uris=["s3://shop/"]'))
    assert (report["rows_in"], report["rows_out"], report["rows_quarantined"]) == (12, 4, 8)
    assert report["quarantined_by_reason"] == {"image_ref_outside_root": 4, "image_ref_not_allowed": 2,
                                               "image_ref_has_query": 1, "image_ref_invalid": 1}
    quarantine = {q["id"]: q for q in read_jsonl(dataset_dir(tmp_path, "refs") / "quarantine.jsonl")}
    assert {i: q["reason"] for i, q in quarantine.items()} == {
        "BAD-dotdot": "image_ref_outside_root", "BAD-absolute": "image_ref_outside_root",
        "BAD-symlink": "image_ref_outside_root", "BAD-second-ref": "image_ref_outside_root",
        "BAD-file-uri": "image_ref_not_allowed", "BAD-other-bucket": "image_ref_not_allowed",
        "BAD-query": "image_ref_has_query", "BAD-nul": "image_ref_invalid"}
    assert "through a symbolic link" in quarantine["BAD-symlink"]["detail"]
    items = pq.read_table(dataset_dir(tmp_path, "refs") / "items").to_pylist()
    assert sorted(i["id"] for i in items) == sorted([*(r["id"] for r in good), "OK-absolute-inside"])
    leaked = hashlib.sha256(secret.read_bytes()).hexdigest()
    assert all(leaked not in i["image_sha256"] for i in items)


@pytest.mark.slow
def test_unknown_columns_quarantined_when_configured(tmp_path, ray_session):
    good = luma_rows(2)
    copy_luma_images(good, tmp_path)
    catalog = write_jsonl(tmp_path / "catalog.jsonl", [good[0], dict(good[1], warehouse="B7", aisle=3)])
    report = run_preprocess(config(tmp_path, catalog, "data.unknown_columns=quarantine"))
    assert (report["rows_in"], report["rows_out"], report["rows_quarantined"]) == (2, 1, 1)
    assert report["quarantined_by_reason"] == {"unknown_columns": 1}
    assert report["unknown_columns"] == {}
    (q,) = read_jsonl(dataset_dir(tmp_path) / "quarantine.jsonl")
    assert q["id"] == good[1]["id"] and q["reason"] == "unknown_columns"
    assert "aisle" in q["detail"] and "warehouse" in q["detail"]


@pytest.mark.slow
def test_folder_of_jsonl_parquet_and_csv(tmp_path, ray_session):
    rows = luma_rows(6)
    folder = tmp_path / "cat"
    copy_luma_images(rows, folder)
    write_jsonl(folder / "a.jsonl", rows[:2])
    pq.write_table(pa.Table.from_pylist(rows[2:4]), folder / "b.parquet")
    write_csv(folder / "c.csv", rows[4:])
    report = run_preprocess(config(tmp_path, folder, "data.rows_per_shard=2"))
    assert report["files"] == 3 and report["shards"] == 3
    assert len(os.listdir(dataset_dir(tmp_path) / "items")) == 3
    assert (report["rows_in"], report["rows_out"], report["rows_quarantined"]) == (6, 6, 0)
    items = {r["id"]: r for r in pq.read_table(dataset_dir(tmp_path) / "items").to_pylist()}
    cfg = DataConfig()
    for row in rows:
        ref = normalize_row(row, cfg)
        for key in ("title", "description", "attributes_json", "sizes", "tags", "price", "image_refs", "captions"):
            assert items[row["id"]][key] == ref[key], (row["id"], key)


@pytest.mark.slow
def test_image_progress_is_logged_per_finished_block(ray_session, caplog):
    import ray

    from mmray.preprocess import _with_progress

    tables = [pa.table({"x": list(range(i * 10, i * 10 + 10))}) for i in range(3)]
    with caplog.at_level(logging.INFO, logger="mmray.preprocess"):
        blocks = list(_with_progress(ray.data.from_arrow(tables), 30, every_s=0.0))
    assert sorted(x for b in blocks for x in b["x"].to_pylist()) == list(range(30))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("images: ")]
    assert [line.split(" rows")[0] for line in lines] == ["images: 10/30", "images: 20/30"]


@pytest.mark.slow
def test_failed_run_leaves_no_half_written_version_and_keeps_the_previous_one(tmp_path, ray_session, monkeypatch):
    rows = luma_rows(3)
    copy_luma_images(rows, tmp_path)
    cfg = config(tmp_path, write_jsonl(tmp_path / "catalog.jsonl", rows))
    first = run_preprocess(cfg)
    out = dataset_dir(tmp_path)
    before = {p.name: p.read_bytes() for p in (out / "items").iterdir()}

    import mmray.preprocess

    monkeypatch.setattr(mmray.preprocess, "_count_rows", lambda fs, paths: -1)  # the shard check fails
    with pytest.raises(RuntimeError, match="the item shards hold -1 rows, expected 3"):
        run_preprocess(cfg)
    assert dataset_dir(tmp_path) == out
    assert sorted(os.listdir(out.parent)) == sorted(["current.json", out.name])  # the failed version was removed
    assert {p.name: p.read_bytes() for p in (out / "items").iterdir()} == before
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(first))


# --------------------------------------------------------------------------- the CLI


def run_cli(tmp_path, *sets: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": "local"}  # its own Ray, never one left running here
    cmd = [sys.executable, "-m", "jobs.preprocess", "--config", "configs/local.yaml",
           "--set", f"storage.root={tmp_path / 'art'}", *[a for s in sets for a in ("--set", s)]]
    return subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def assert_clean_failure(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


@pytest.mark.slow
def test_cli_missing_catalog_path(tmp_path):
    missing = tmp_path / "nope" / "catalog.jsonl"
    proc = run_cli(tmp_path, f"data.catalog={missing}")
    assert_clean_failure(proc, f"catalog path does not exist: {missing}")
    assert not (tmp_path / "art").exists()


@pytest.mark.slow
def test_cli_empty_catalog(tmp_path):
    empty = tmp_path / "catalog.jsonl"
    empty.write_text("\n\n")
    proc = run_cli(tmp_path, f"data.catalog={empty}")
    assert_clean_failure(proc, "catalog is empty")
    assert not (tmp_path / "art").exists()


def test_cli_bad_config_names_the_field(tmp_path):
    proc = run_cli(tmp_path, "data.catalgo=x.jsonl")
    assert_clean_failure(proc, "data.catalgo: unknown field (allowed: ")
