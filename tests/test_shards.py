"""Packed shards: interleaved parallel reads, in a fixed order, from local folders and from
TensorFlow filesystem URLs (ram://, TensorFlow's in-memory filesystem, standing in for gs:// or s3://)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from pipeline.lib import shards

SIZE = 8


@pytest.fixture(autouse=True, params=[1, 2, 5, 16], ids=lambda n: f"{n}-cores")
def cores(request, monkeypatch):
    """Every test here on machines of 1, 2, 5 and 16 cores: what is read, and in which order,
    must not depend on the machine (the features and every training batch follow it)."""
    monkeypatch.setattr(shards.os, "cpu_count", lambda: request.param)
    return request.param


@pytest.fixture
def packed(tmp_path):
    """23 images in shards of 5 (five files); image i is filled with the value i, label i % 3."""
    writer = shards.ShardWriter(tmp_path, "train", shard_size=5)
    for i in range(23):
        writer.write(np.full((SIZE, SIZE, 3), i * 10, np.uint8), i % 3)
    writer.close()
    (tmp_path / "meta.json").write_text(json.dumps({"image_size": SIZE, "counts": {"train": 23},
                                                    "labels": ["a", "b", "c"]}))
    return tmp_path


def images_in_order(ds: tf.data.Dataset) -> list[int]:
    """The image index of every record, in the order read (JPEG is lossy: nearest multiple of 10)."""
    return [int(round(float(img.mean()) / 10)) for images, _ in ds for img in images.numpy()]


def test_reads_every_record_once_from_several_shards_at_a_time(packed):
    order = images_in_order(shards.dataset(packed, "train", 4))
    assert sorted(order) == list(range(23))
    assert order[:5] == [0, 5, 10, 15, 1]  # round robin over the open shards, not file after file
    assert order == images_in_order(shards.dataset(packed, "train", 4))  # and the same every time


def test_labels_travel_with_their_images(packed):
    for images, labels in shards.dataset(packed, "train", 7):
        index = np.round(images.numpy().mean(axis=(1, 2, 3)) / 10).astype(int)
        assert list(labels.numpy()) == list(index % 3)


def test_shuffled_reads_are_seeded_and_differ_between_epochs(packed):
    ds = shards.dataset(packed, "train", 4, shuffle_seed=1)
    first, second = images_in_order(ds), images_in_order(ds)
    assert sorted(first) == sorted(second) == list(range(23))
    assert first != second  # reshuffled each epoch
    assert first == images_in_order(shards.dataset(packed, "train", 4, shuffle_seed=1))


def test_a_filesystem_url_reads_like_a_local_folder(packed):
    url = f"ram://bucket/{packed.name}/augmented"  # as gs://... would be; ram:// lives as long as the process
    for path in packed.iterdir():
        tf.io.gfile.copy(str(path), f"{url}/{path.name}", overwrite=True)
    assert shards.meta(url)["counts"] == {"train": 23}
    assert shards.files(url, "train")[0] == f"{url}/train-00000.tfrecord"
    assert images_in_order(shards.dataset(url, "train", 4)) == images_in_order(shards.dataset(packed, "train", 4))
    assert images_in_order(shards.dataset(url + "/", "train", 4, shuffle_seed=3)) == images_in_order(
        shards.dataset(packed, "train", 4, shuffle_seed=3))


def test_missing_shards_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no val-\\*.tfrecord shards in {tmp_path}"):
        shards.files(tmp_path, "val")


def test_an_earlier_outputs_records_are_found_by_key_and_read_back(tmp_path):
    """shards.Previous, what augment copies from: by key, any names of the output, and none missing
    (an output written with augment.copies 0 has no train_aug shards)."""
    writer = shards.ShardWriter(tmp_path, "train", shard_size=2)
    for i in range(5):
        writer.write(np.full((SIZE, SIZE, 3), i * 40, np.uint8), i % 3, key=f"{i:064x}/0")
    writer.close()
    (tmp_path / "meta.json").write_text(json.dumps({"image_size": SIZE, "counts": {"train": 5, "train_aug": 0},
                                                    "labels": ["a", "b", "c"]}))
    found = shards.Previous(tmp_path, ["train", "train_aug", "val"])
    assert f"{3:064x}/0" in found and f"{3:064x}/1" not in found
    jpeg = found.image(f"{3:064x}/0")
    assert jpeg == shards.encode(np.full((SIZE, SIZE, 3), 3 * 40, np.uint8))  # the very bytes written
