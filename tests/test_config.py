"""Typed config: defaults, YAML, dotted overrides and one-line errors that name the field."""
from __future__ import annotations

import os
import re

import pydantic
import pytest
import yaml
from conftest import LOCAL_CONFIG, ROOT

from mmray.config import ConfigError, DataConfig, MmrayConfig, load_config

TOP_LEVEL = "copy, creative, data, index, jobs, model, recommend, report, rerank, serve, storage, train"


def test_defaults_load():
    cfg = load_config()
    assert isinstance(cfg, MmrayConfig)
    assert cfg.data.catalog == "data/luma/catalog.jsonl"
    assert cfg.data.image_root is None
    assert cfg.data.image_size == 256
    assert cfg.data.image_format == "JPEG"
    assert cfg.data.allowed_image_formats == ["JPEG", "PNG", "WEBP"]
    assert cfg.data.max_image_pixels == 40_000_000
    assert cfg.data.max_image_bytes == 20 * 1024 * 1024
    assert cfg.data.unknown_columns == "keep"
    assert cfg.data.holdout_fraction == 0.15
    assert cfg.data.caption.num_variants == 4
    assert cfg.storage.root == "artifacts"
    assert cfg.storage.keep_versions == 3


def test_artifact_uris_join_local_and_bucket_roots():
    from mmray.storage import ArtifactStore, dataset_kind

    local = ArtifactStore.from_config(load_config().storage)
    assert local.uri(dataset_kind("luma")) == os.path.abspath("artifacts") + "/datasets/luma"
    bucket = ArtifactStore.from_config(load_config(overrides=["storage.root=s3://bucket/mm/"]).storage)
    assert bucket.uri(dataset_kind("luma")) == "s3://bucket/mm/datasets/luma"


def test_local_yaml_loads_and_matches_file():
    cfg = load_config(LOCAL_CONFIG)
    with open(LOCAL_CONFIG, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    for section, fields in raw.items():
        for name, value in fields.items():
            assert getattr(getattr(cfg, section), name) == value, f"{section}.{name}"
    assert cfg.data.catalog == "data/luma/catalog.jsonl"
    assert cfg.serve.host == "127.0.0.1"


def test_overrides_parse_types():
    cfg = load_config(LOCAL_CONFIG, [
        "data.rows_per_shard=32",
        "data.holdout_fraction=0.25",
        "train.use_gpu=true",
        "train.lr=1e-4",
        "data.image_root=",
        "data.allowed_image_formats=[JPEG, PNG]",
        "data.caption.num_variants=2",
        "storage.root=/tmp/some where",
        "data.image_size=128",
    ])
    assert cfg.data.rows_per_shard == 32 and type(cfg.data.rows_per_shard) is int
    assert cfg.data.holdout_fraction == 0.25 and type(cfg.data.holdout_fraction) is float
    assert cfg.train.use_gpu is True
    assert cfg.train.lr == pytest.approx(1e-4) and type(cfg.train.lr) is float
    assert cfg.data.image_root is None
    assert cfg.data.allowed_image_formats == ["JPEG", "PNG"]
    assert cfg.data.caption.num_variants == 2
    assert cfg.storage.root == "/tmp/some where"
    assert cfg.data.image_size == 128  # the override beats the file's 256
    assert cfg.data.name == "luma"  # untouched fields keep the file's values


def test_unknown_field_names_field_and_allowed_fields():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["data.rows_per_shards=3"])
    msg = str(e.value)
    assert "data.rows_per_shards: unknown field" in msg
    assert f"(allowed: {', '.join(sorted(DataConfig.model_fields))})" in msg
    assert "rows_per_shard," in msg and "\n" not in msg


def test_unknown_nested_and_top_level_fields():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["data.caption.variants=3"])
    assert ("data.caption.variants: unknown field "
            "(allowed: attribute_phrase, attribute_phrases, attributes, description_chars, max_attribute_values, "
            "nouns, num_variants, query_attributes)") in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["dataa.catalog=x"])
    assert f"dataa: unknown field (allowed: {TOP_LEVEL})" in str(e.value)


def test_unknown_field_in_yaml_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("data:\n  catalgo: x.jsonl\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"invalid {path}: ")
    assert "data.catalgo: unknown field" in msg and "catalog" in msg


def test_bad_literal_names_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["data.image_format=GIF"])
    msg = str(e.value)
    assert "data.image_format" in msg and "'JPEG', 'PNG' or 'WEBP'" in msg and "'GIF'" in msg
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["data.unknown_columns=drop"])
    assert "data.unknown_columns" in str(e.value) and "'keep' or 'quarantine'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["data.allowed_image_formats=[JPEG, TIFF]"])
    assert "data.allowed_image_formats.1" in str(e.value) and "'TIFF'" in str(e.value)


def test_out_of_range_and_wrong_type_name_the_field():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["data.holdout_fraction=1.0"])
    assert "data.holdout_fraction" in str(e.value) and "less than 1" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["data.rows_per_shard=lots"])
    assert "data.rows_per_shard" in str(e.value) and "'lots'" in str(e.value)


def test_several_errors_on_one_line():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["data.image_size=8", "data.bogus=1"])
    msg = str(e.value)
    assert "\n" not in msg
    assert "data.image_size" in msg and "data.bogus: unknown field" in msg and "; " in msg


@pytest.mark.parametrize("item, expected", [
    ("data.rows_per_shard", "must look like section.field=value"),
    ("=3", "must look like section.field=value"),
])
def test_malformed_override(item, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(overrides=[item])


def test_override_through_a_value_is_refused():
    with pytest.raises(ConfigError, match="'data' is not a section"):
        load_config(overrides=["data=1", "data.name=x"])


def test_config_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- data\n")
    with pytest.raises(ConfigError, match="must hold a mapping at the top level"):
        load_config(listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == load_config()


def test_assignment_is_validated():
    cfg = load_config()
    with pytest.raises(pydantic.ValidationError):
        cfg.data.rows_per_shard = 0
    assert cfg.data.rows_per_shard == 2000


def test_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(LOCAL_CONFIG, ["data.image_root=/imgs", "data.caption.attributes=[material]"])
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert load_config(path) == cfg


def test_override_of_a_text_field_keeps_the_text():
    # YAML would read these as an int, a float, a bool and an octal-looking int
    cfg = load_config(overrides=["data.name=2024", "storage.root=1e3", "data.image_root=007", "data.catalog=true"])
    assert (cfg.data.name, cfg.storage.root, cfg.data.image_root, cfg.data.catalog) == ("2024", "1e3", "007", "true")
    assert load_config(overrides=["data.seed=7"]).data.seed == 7  # numbers still parse for number fields
    with pytest.raises(ConfigError, match="data.seed"):
        load_config(overrides=["data.seed=seven"])


# --------------------------------------------------------------------------- the shipped configs

SHIPPED_CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def _assert_subset(loaded, raw, where: str) -> None:
    if isinstance(raw, dict):
        for key, value in raw.items():
            _assert_subset(loaded[key], value, f"{where}.{key}" if where else key)
    else:
        assert loaded == raw, f"{where}: file says {raw!r}, loaded {loaded!r}"


def test_configs_folder_is_not_empty():
    assert LOCAL_CONFIG in SHIPPED_CONFIGS and len(SHIPPED_CONFIGS) >= 2


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads_and_keeps_its_values(path):
    cfg = load_config(path)
    with open(path, encoding="utf-8") as f:
        _assert_subset(cfg.model_dump(mode="json"), yaml.safe_load(f), "")


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_index_factory_parses_and_refines_pq(path):
    """The factory string builds with FAISS; a PQ index re-ranks its candidates.

    mmray.index.ann.auto_factory only picks PQ codes at production scale (over 2M items), and
    re-ranks them there (`Refine(SQ8)`) because IVF-PQ alone recalls about 0.46@10: a config
    that names PQ itself must do the same. `auto` is checked at 10M items."""
    import faiss

    from mmray.index.ann import auto_factory

    factory = load_config(path).index.factory
    spec = auto_factory(10_000_000, 64) if factory == "auto" else factory
    pq = re.search(r"PQ(\d+)", spec)
    dim = 2 * int(pq.group(1)) if pq else 16  # PQ needs the dimension to be a multiple of its M
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    assert index.d == dim
    if pq:
        assert "Refine(" in spec or "RFlat" in spec, f"{path.name}: index.factory={factory!r} is PQ without refine"
