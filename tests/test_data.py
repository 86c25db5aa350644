"""Sources → transform-pair stream: embedded photos, folders, Parquet, node/worker splits and bad inputs."""

from __future__ import annotations

import hashlib
import logging
import socket

import datasets
import numpy as np
import pytest
import torch
from _data_helpers import awkward_images, coloured_square, encode, index_from_pixel_values
from PIL import Image

from equirecon.imaging import sources
from equirecon.imaging.sources import (
    EMBEDDED_PHOTOS,
    EMBEDDED_VALIDATION_PHOTOS,
    embedded_photos,
    find_image_column,
    image_folder_to_parquet,
    load_images,
)
from equirecon.imaging.transformations import TransformationConfig
from equirecon.training import data
from equirecon.training.data import SKIPPED_IMAGES_KEY, build_transform_pair_dataset, collate_transform_pairs
from equirecon.training.views import TransformPairMaker

SIZE = 16


def maker(preset: str = "none", **kwargs) -> TransformPairMaker:
    return TransformPairMaker(TransformationConfig(), view_preset=preset, size=SIZE, min_image_size=8, **kwargs)


def indexed_images(count: int) -> datasets.Dataset:
    """Constant images whose colour encodes their index (readable from any view of the "none" preset)."""
    return datasets.Dataset.from_dict(
        {"image": [coloured_square(i) for i in range(count)], "caption": [str(i) for i in range(count)]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )


def indices(stream) -> list[int]:
    return [index_from_pixel_values(example["pixel_values"]) for example in stream]


@pytest.fixture(autouse=True)
def no_parquet_shutdown_sleep(monkeypatch):
    """datasets 5.2 sleeps 5 s after each shuffled pass over Parquet shards (apache/arrow#45214); not needed here."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    for i in range(10):
        sub = folder / ("cats" if i % 2 else "dogs")
        sub.mkdir(parents=True, exist_ok=True)
        coloured_square(i).save(sub / f"{i:02d}.png")
    return folder


# ----------------------------------------------------------------------------------------------- embedded


def test_embedded_photos_load_offline_and_are_split_by_photo(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the embedded dataset must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    sources._embedded_photo_bytes.cache_clear()
    train, validation = embedded_photos("train"), embedded_photos("validation")
    assert set(validation["name"]) == set(EMBEDDED_VALIDATION_PHOTOS)
    assert set(train["name"]) | set(validation["name"]) == set(EMBEDDED_PHOTOS)
    assert not set(train["name"]) & set(validation["name"])
    digests = [
        {
            hashlib.sha256(row["bytes"]).hexdigest()
            for row in split.cast_column("image", datasets.Image(decode=False))["image"]
        }
        for split in (train, validation)
    ]
    assert not digests[0] & digests[1] and len(digests[0]) == len(train)  # no photo in both, none twice
    astronaut = train[train["name"].index("astronaut")]["image"]
    assert astronaut.size == (512, 512) and astronaut.mode == "RGB"
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'validation', 'all'\)"):
        embedded_photos("test")


def test_load_images_embedded_streaming():
    stream = load_images("embedded", split="validation", streaming=True)
    assert isinstance(stream, datasets.IterableDataset) and stream.num_shards == len(EMBEDDED_VALIDATION_PHOTOS)


# ------------------------------------------------------------------------------------------------ sources


def test_load_images_from_datasets_objects():
    images = indexed_images(3)
    assert load_images(images) is images
    assert load_images(datasets.DatasetDict({"validation": images}), split="validation") is images
    with pytest.raises(ValueError, match=r"available splits: \['validation'\]"):
        load_images(datasets.DatasetDict({"validation": images}))


def test_load_images_from_an_image_folder(image_folder, tmp_path):
    images = load_images(image_folder, cache_dir=str(tmp_path / "cache"))
    assert len(images) == 10 and images.column_names == ["image"]  # class folders are not labels here
    stream = load_images(image_folder, streaming=True)
    assert sorted(indices_from_images(stream)) == list(range(10))


def indices_from_images(stream) -> list[int]:
    return [round((np.asarray(example["image"])[0, 0, 0] - 5) / 10) for example in stream]


def test_image_folder_to_parquet_round_trips_into_balanced_shards(image_folder, tmp_path):
    shards = image_folder_to_parquet(image_folder, tmp_path / "parquet", num_shards=4)
    assert [s.name for s in shards] == [f"train-{i:05d}-of-00004.parquet" for i in range(4)]
    stream = load_images(tmp_path / "parquet", streaming=True)
    assert stream.num_shards == 4 and isinstance(stream.features["image"], datasets.Image)
    assert sorted(indices_from_images(stream)) == list(range(10))
    cache = str(tmp_path / "cache")  # map-style loads write an Arrow cache
    sizes = [len(load_images(str(shard), cache_dir=cache)) for shard in shards]
    assert sorted(sizes) == [2, 2, 3, 3]  # round-robin: cats and dogs in every shard
    raw = load_images(str(tmp_path / "parquet" / "*.parquet"), cache_dir=cache)
    raw = raw.cast_column("image", datasets.Image(decode=False))
    paths = sorted(row["path"] for row in raw["image"])
    assert paths[0] == "cats/01.png" and len(paths) == 10
    assert raw["image"][0]["bytes"] == (image_folder / raw["image"][0]["path"]).read_bytes()  # not re-encoded
    with pytest.raises(FileExistsError, match="overwrite=True"):
        image_folder_to_parquet(image_folder, tmp_path / "parquet")
    assert len(image_folder_to_parquet(image_folder, tmp_path / "parquet", num_shards=2, overwrite=True)) == 2
    with pytest.raises(ValueError, match="no image files"):
        image_folder_to_parquet(tmp_path / "parquet", tmp_path / "other")


def test_a_missing_local_path_is_not_looked_up_on_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere' does not exist"):
        load_images(str(tmp_path / "nowhere"))
    (tmp_path / "notes.txt").write_text("not images")
    with pytest.raises(FileNotFoundError, match="neither an image folder"):
        load_images(str(tmp_path / "notes.txt"))
    with pytest.raises(FileNotFoundError, match="no files match"):
        load_images(str(tmp_path / "*.parquet"))


def test_missing_image_column_names_the_columns_found():
    table = datasets.Dataset.from_dict({"caption": ["a"], "label": [0]})
    with pytest.raises(ValueError, match=r"columns \['caption', 'label'\]"):
        find_image_column(table)
    with pytest.raises(ValueError, match=r"image_column='photo' is not a column.*\['caption', 'label'\]"):
        load_images(table, image_column="photo")
    with pytest.raises(ValueError, match=r"columns \['caption', 'label'\]"):
        build_transform_pair_dataset(table, maker())


def test_image_column_is_found_by_type_or_by_name():
    assert find_image_column(indexed_images(1).rename_column("image", "picture_of_the_day")) == "picture_of_the_day"
    webdataset_style = datasets.Dataset.from_dict({"__key__": ["a"], "jpg": [encode(coloured_square(0))]})
    assert find_image_column(webdataset_style) == "jpg"
    examples = list(build_transform_pair_dataset(webdataset_style, maker()))  # raw bytes column
    assert len(examples) == 1 and index_from_pixel_values(examples[0]["pixel_values"]) == 0


# ------------------------------------------------------------------------------------------------- stream


def test_transform_pair_examples_and_collator():
    stream = build_transform_pair_dataset(indexed_images(5), maker("all"))
    examples = list(stream)
    assert len(examples) == 5
    batch = collate_transform_pairs(examples)
    base_size = maker().base_size  # SE(2): the view plus a context margin for the largest θ
    assert batch["pixel_values"].shape == (5, 3, SIZE, SIZE)
    assert batch["base_pixel_values"].shape == (5, 3, base_size, base_size)
    assert batch["transform_params"].shape == (5, 3) and batch["transform_params"].dtype == torch.float32
    with pytest.raises(ValueError, match="empty"):
        collate_transform_pairs([])
    with pytest.raises(ValueError, match=r"lack \['base_pixel_values', 'transform_params'\]"):
        collate_transform_pairs([{"pixel_values": torch.zeros(3)}])


def test_repeat_none_streams_forever_and_shuffles():
    stream = build_transform_pair_dataset(indexed_images(4), maker(), repeat=None, shuffle_seed=1)
    seen = indices(stream.take(20))
    assert len(seen) == 20 and sorted(set(seen)) == [0, 1, 2, 3]
    assert indices(build_transform_pair_dataset(indexed_images(4), maker(), shuffle_seed=None)) == [0, 1, 2, 3]


def _parquet_stream(tmp_path, count: int, num_shards: int) -> datasets.IterableDataset:
    folder = tmp_path / f"folder{num_shards}"
    folder.mkdir()
    for i in range(count):
        coloured_square(i).save(folder / f"{i:02d}.png")
    image_folder_to_parquet(folder, tmp_path / f"parquet{num_shards}", num_shards=num_shards)
    return load_images(tmp_path / f"parquet{num_shards}", streaming=True)


@pytest.mark.parametrize("source", ["dataset", "parquet-4-shards", "parquet-3-shards"])
def test_node_split_reads_every_image_exactly_once(source, tmp_path):
    images = {
        "dataset": lambda: indexed_images(10),
        "parquet-4-shards": lambda: _parquet_stream(tmp_path, 10, 4),
        "parquet-3-shards": lambda: _parquet_stream(tmp_path, 10, 3),  # not a multiple: split by example
    }[source]()
    per_rank = [indices(build_transform_pair_dataset(images, maker(), rank=r, world_size=2)) for r in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == list(range(10))
    assert min(len(p) for p in per_rank) >= 4


def test_node_and_worker_split_together_cover_each_shard_once(tmp_path):
    images = _parquet_stream(tmp_path, 16, 8)
    seen = []
    for rank in range(2):
        stream = build_transform_pair_dataset(images, maker(), rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2, collate_fn=collate_transform_pairs)
        seen += [index_from_pixel_values(pixels) for batch in loader for pixels in batch["pixel_values"]]
    assert sorted(seen) == list(range(16))


def test_dataloader_workers_have_distinct_augmentation_streams():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    same = datasets.Dataset.from_dict({"image": [photo] * 8}, features=datasets.Features({"image": datasets.Image()}))
    stream = build_transform_pair_dataset(same, maker("all"), num_shards=2, shuffle_seed=None)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2, collate_fn=collate_transform_pairs)
    first, second = list(loader)  # one shard of 4 identical images per worker, one batch each
    assert not torch.equal(first["transform_params"], second["transform_params"])
    assert not torch.equal(first["pixel_values"], second["pixel_values"])
    assert len({tuple(t.tolist()) for t in torch.cat([first["transform_params"], second["transform_params"]])}) == 8


def test_bad_images_are_converted_or_skipped_with_a_warning_and_named_in_the_next_example(caplog):
    files = awkward_images()
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": content, "path": f"{name}.png"} for name, content in files.items()]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    with caplog.at_level(logging.WARNING, logger=data.__name__):
        examples = list(build_transform_pair_dataset(table, maker("all"), shuffle_seed=None))
    assert len(examples) == len(files) - 2
    assert all(
        e["pixel_values"].shape == (3, SIZE, SIZE) and torch.isfinite(e["pixel_values"]).all() for e in examples
    )
    named = [name for example in examples for name in example[SKIPPED_IMAGES_KEY]]
    assert named == ["corrupt.png", "truncated.png"]
    skipped = [r.getMessage() for r in caplog.records if "Skipping an undecodable image" in r.getMessage()]
    assert len(skipped) == 2 and "corrupt.png (" in skipped[0]


def test_a_source_where_nothing_decodes_fails_loudly():
    table = datasets.Dataset.from_dict({"image": [b"not an image"] * 120})
    with pytest.raises(RuntimeError, match="first 100 images of column 'image' all failed to decode"):
        list(build_transform_pair_dataset(table, maker(), shuffle_seed=None))


def test_bad_stream_arguments_name_the_field():
    images = indexed_images(4)
    with pytest.raises(ValueError, match="rank must be"):
        build_transform_pair_dataset(images, maker(), rank=2, world_size=2)
    with pytest.raises(ValueError, match="num_shards"):
        build_transform_pair_dataset(images, maker(), num_shards=5)
    with pytest.raises(ValueError, match="cannot re-shard"):
        build_transform_pair_dataset(images.to_iterable_dataset(num_shards=2), maker(), num_shards=4)


# ------------------------------------------------------------------------------------------ decode cache


def test_decode_cache_returns_what_decoding_returns_and_keeps_within_its_budget():
    from equirecon.imaging.decoding import DecodeCache, to_rgb_uint8

    files = [encode(coloured_square(i)) for i in range(3)]  # distinct PNGs of one size
    nbytes = to_rgb_uint8(files[0], min_size=8).nbytes
    cache = DecodeCache(max_bytes=2 * nbytes)
    first = cache({"bytes": files[0], "path": "a.png"}, min_size=8)
    np.testing.assert_array_equal(first, to_rgb_uint8(files[0], min_size=8))
    assert not first.flags.writeable  # shared between calls: no transform may change it in place
    assert cache(files[0], min_size=8) is first and (cache.hits, cache.misses) == (1, 1)  # keyed by the content
    cache(files[1], min_size=8)
    cache(files[2], min_size=8)  # a budget of two arrays: the least recently used one, files[0]'s, goes
    assert cache.num_bytes == 2 * nbytes
    again = cache(files[0], min_size=8)
    assert again is not first and (cache.hits, cache.misses) == (1, 4)
    assert cache(files[2], min_size=8) is not None and cache.hits == 2  # files[1]'s went instead
    larger = cache(files[2], min_size=4 * first.shape[0])  # the size asked for is part of the key
    assert larger.shape[0] == 4 * first.shape[0] and cache.misses == 5 and cache.num_bytes == 2 * nbytes
    array = np.zeros((8, 8, 3), np.uint8)
    assert cache(array, min_size=8).flags.writeable and (cache.hits, cache.misses) == (2, 5)  # not cached
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        DecodeCache(-1)


def test_a_repeated_dataset_decodes_each_image_once_and_gives_the_same_pairs(monkeypatch):
    from equirecon.imaging import decoding

    calls = []
    original = decoding.to_rgb_uint8
    monkeypatch.setattr(decoding, "to_rgb_uint8", lambda image, **kwargs: calls.append(1) or original(image, **kwargs))

    def pairs(**kwargs) -> list[dict]:
        calls.clear()
        stream = build_transform_pair_dataset(indexed_images(4), maker("all"), repeat=3, shuffle_seed=1, **kwargs)
        return list(stream)

    cached, decodes_cached = pairs(), len(calls)
    uncached, decodes_uncached = pairs(decode_cache_bytes=0), len(calls)
    assert (decodes_cached, decodes_uncached) == (4, 12)
    assert len(cached) == len(uncached) == 12
    for a, b in zip(cached, uncached, strict=True):
        assert all(torch.equal(a[key], b[key]) for key in ("pixel_values", "base_pixel_values", "transform_params"))
    with pytest.raises(ValueError, match="decode_cache_bytes"):
        build_transform_pair_dataset(indexed_images(4), maker(), decode_cache_bytes=-1)
