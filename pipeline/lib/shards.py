"""Packed image shards: a few TFRecord files instead of thousands of small files.

Each record holds a JPEG-encoded, already-resized RGB image and its class
index. JPEG at quality 95 keeps shards several times smaller than raw pixels;
the sources are JPEG photos already, so the extra loss is negligible.

Reading goes through TensorFlow's filesystems (``tf.io.gfile``), so a shard
folder may also be a URL such as ``gs://bucket/augmented`` or ``s3://...``
(a shared copy of a DVC output): the same code streams it, several shards at
a time, never holding the dataset in memory.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from pipeline.lib import errors

SHARD_SIZE = 1024
JPEG_QUALITY = 95
PREFETCH_BATCHES = 2
# Shards read at once, interleaved record by record. Reading waits on storage rather than
# the CPU (a network filesystem or object store most of all), so more readers than a small
# machine has cores. A constant, never the core count: it decides the order of the records,
# and so of the features and of every training batch, which must not depend on the machine.
PARALLEL_READS = 4


def parallel_calls() -> int:
    """Decoding threads: one per core, asked at each call (the order does not depend on it).

    Fixed instead of tf.data's autotuner: on a small CPU the autotuner's threads fight the
    training step for the cores and epoch speed swings (bench/README.md). Decoding is cheap
    next to training, so one thread per core and two batches in flight keep the model fed."""
    return os.cpu_count() or 1


class ShardWriter:
    """Write ``(image, label)`` records to ``<directory>/<name>-NNNNN.tfrecord`` files."""

    def __init__(self, directory: Path, name: str, shard_size: int = SHARD_SIZE):
        self.directory, self.name, self.shard_size = Path(directory), name, shard_size
        self.count, self._writer = 0, None

    def write(self, image: np.ndarray, label, key: str = "") -> None:
        """``label``: a class index, or (task: multi_label) one 0/1 per label. ``key``: what the
        image is (augment's ``<content hash>/<view>``), for a later run to find it (``Previous``)."""
        self.write_encoded(encode(image), label, key)

    def write_encoded(self, jpeg: bytes, label, key: str = "") -> None:
        """``write`` of an image already encoded (``encode``)."""
        if self.count % self.shard_size == 0:
            self.close()
            path = self.directory / f"{self.name}-{self.count // self.shard_size:05d}.tfrecord"
            self._writer = tf.io.TFRecordWriter(str(path))
        feature = {
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=np.atleast_1d(label).astype(int).tolist())),
        }
        if key:
            feature["key"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()]))
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        # Protobuf map order varies between processes unless asked: byte-identical shards need this.
        self._writer.write(example.SerializeToString(deterministic=True))
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def encode(image: np.ndarray) -> bytes:
    """A resized uint8 RGB image as a shard stores it."""
    return tf.io.encode_jpeg(image, quality=JPEG_QUALITY).numpy()


class Previous:
    """The encoded images of an earlier output's ``names`` shards (a local folder), by the key
    each was written with: a pass over the shards (checksums checked) notes where each record
    lies, and ``image`` reads one when asked, so memory holds the index, never the images."""

    def __init__(self, directory: Path, names: list[str]):
        self.where: dict[bytes, tuple[str, int, int]] = {}
        held = [name for name in names if count(directory, name)]  # augment.copies 0 wrote no train_aug
        for path in (f for name in held for f in files(directory, name)):
            at = 0
            for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
                key = tf.train.Example.FromString(record).features.feature["key"].bytes_list.value
                if key:
                    # a record is its length (8 bytes) and that length's CRC (4), the data, its CRC (4)
                    self.where[key[0]] = (path, at + 12, len(record))
                at += 16 + len(record)

    def __contains__(self, key: str) -> bool:
        return key.encode() in self.where

    def image(self, key: str) -> bytes:
        path, offset, length = self.where[key.encode()]
        with open(path, "rb") as f:
            f.seek(offset)
            record = f.read(length)
        return tf.train.Example.FromString(record).features.feature["image"].bytes_list.value[0]


def _join(directory: Path | str, name: str) -> str:
    return f"{str(directory).rstrip('/')}/{name}"  # not Path: it would turn gs://b into gs:/b


def files(directory: Path | str, name: str) -> list[str]:
    found = sorted(tf.io.gfile.glob(_join(directory, f"{name}-*.tfrecord")))
    if not found:
        raise FileNotFoundError(f"no {name}-*.tfrecord shards in {directory}")
    return found


def meta(directory: Path | str) -> dict:
    """The ``meta.json`` the augment stage writes beside the shards: image_size, counts, labels,
    class_counts; checked for its keys and types, and its counts against the shard files there.
    A count that lies by less than a shard is caught while reading (``reading``)."""
    path = _join(directory, "meta.json")
    if not tf.io.gfile.exists(path):
        raise errors.missing_input(path)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            info = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise errors.damaged(path, f"not valid JSON: {err}") from err
    counts = info.get("counts") if isinstance(info, dict) else None
    if not (isinstance(counts, dict) and all(type(v) is int and v >= 0 for v in counts.values())
            and type(info.get("image_size")) is int):
        raise errors.damaged(path, "not augment's meta.json: it needs image_size and counts of records")
    for name, n in counts.items():  # every shard holds at least one record
        found = len(tf.io.gfile.glob(_join(directory, f"{name}-*.tfrecord")))
        if not (found == 0 if n == 0 else 1 <= found <= n):
            raise errors.damaged(path, f"it counts {n:,} {name} records, but {directory} holds {found} "
                                          f"{name} shard(s)")
    return info


# What tf.data raises for a shard that is not what augment wrote: a bad checksum or a cut-off
# record (DataLossError), fewer or more records than meta.json counts (assert_cardinality's
# FailedPreconditionError), an image that does not decode (InvalidArgumentError).
DAMAGE = (tf.errors.DataLossError, tf.errors.FailedPreconditionError, tf.errors.InvalidArgumentError,
          tf.errors.OutOfRangeError)


@contextlib.contextmanager
def reading(directory: Path | str) -> Iterator[None]:
    """Turn a damaged shard met while reading ``directory`` into one line naming the file to blame:
    the shard that does not read (``culprit``), or meta.json when every shard reads but the
    records are not the number it counts."""
    try:
        yield
    except DAMAGE as err:
        raise culprit(directory) or errors.damaged(directory, _message(err)) from err


def culprit(directory: Path | str) -> errors.StageError | None:
    """Read every shard of ``directory`` on its own, record by record as ``dataset`` does: the first
    that fails is named with its own error; else, a split whose shards hold another number of
    records than meta.json counts names meta.json; else None. A pass over the data, made only
    after a read failed."""
    info = meta(directory)
    parse = _parser(info["image_size"], label_shape(info))
    for name, counted in info["counts"].items():
        held = 0
        for path in files(directory, name) if counted else []:
            try:
                held += sum(1 for _ in tf.data.TFRecordDataset(path).map(parse))
            except DAMAGE as err:
                return errors.damaged(path, _message(err))
        if held != counted:
            return errors.damaged(_join(directory, "meta.json"), f"it counts {counted:,} {name} records, but "
                                     f"the {name} shards hold {held:,}")
    return None


def _message(err: tf.errors.OpError) -> str:
    """The first line of a tf.data error, without the graph and op names TensorFlow puts around it."""
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", err.message or "").strip()
    line = re.sub(r"\s*\[Op:.*$", "", (text.splitlines() or [""])[0])  # eager mode's "[Op:IteratorGetNext] name"
    return f"{type(err).__name__}: {line[:300]}".rstrip(": ")


def count(directory: Path | str, name: str) -> int:
    """Records in the ``name`` shards."""
    return meta(directory)["counts"].get(name, 0)


def label_shape(info: dict) -> list[int]:
    """A record's label shape, from meta.json: ``[]`` (a class index), or ``[labels]`` (one 0/1 per
    label) when augment wrote ``"task": "multi_label"``."""
    return [len(info["labels"])] if info.get("task") == "multi_label" else []


def _parser(size: int, shape: list[int]) -> Callable:
    """A record -> ``(float32 image, int32 label)``, for images of ``size`` pixels a side; the
    label of ``shape`` (``label_shape``)."""
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature(shape, tf.int64)}

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        # Static shape for the model (decode_jpeg's is unknown); fails loudly on a stray size
        image = tf.ensure_shape(tf.io.decode_jpeg(example["image"], channels=3), [size, size, 3])
        return tf.cast(image, tf.float32), tf.cast(example["label"], tf.int32)
    return parse


def _records(paths: list[str], shuffle_seed: int | None = None) -> tf.data.Dataset:
    """The serialized records of the shard files ``paths``: in one fixed order unless shuffled."""
    ds = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    readers = min(len(paths), PARALLEL_READS)
    return ds.interleave(tf.data.TFRecordDataset, cycle_length=readers, num_parallel_calls=readers,
                         deterministic=True)


def index(directory: Path | str, names: list[str] | str) -> tuple[list[bytes], np.ndarray, list[str]]:
    """``(keys, labels, views)`` of the ``names`` records in ``dataset``'s unshuffled order, nothing
    decoded: a record's key is the sha256 of its encoded image, so the same pixels have the same key;
    its view is what augment wrote it as, ``<source image's sha256>/<view>`` (0: the image as it
    is), or "" for a record written without one."""
    names = [names] if isinstance(names, str) else names
    info = meta(directory)
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature(label_shape(info), tf.int64),
            "key": tf.io.FixedLenFeature([], tf.string, default_value="")}
    keys, labels, views = [], [], []
    paths = [f for name in names for f in files(directory, name)]
    if paths:
        ds = _records(paths).batch(SHARD_SIZE).map(lambda r: tf.io.parse_example(r, spec))
        for batch in ds:
            keys += [hashlib.sha256(image).digest() for image in batch["image"].numpy()]
            labels.append(batch["label"].numpy())
            views += [view.decode() for view in batch["key"].numpy()]
    shape = label_shape(info)
    return keys, (np.concatenate(labels) if labels else np.zeros([0, *shape], np.int64)).astype(np.int32), views


def dataset(directory: Path | str, names: list[str] | str, batch_size: int,
            shuffle_seed: int | None = None, transform: Callable | None = None,
            only: np.ndarray | None = None) -> tf.data.Dataset:
    """Batches of ``(float32 images in [0, 255], int32 labels)``, in file order unless shuffled.

    ``transform``, if given, maps each batch of images (online augmentation). ``only``, if given,
    is one bool per record in file order (``index``'s): the records left out are never decoded.

    Reads several shards at once (interleaved, in a fixed order; shuffled shard order
    too when ``shuffle_seed`` is given), decodes in parallel and prefetches, so the model
    never waits on input; memory holds a few batches plus the shuffle buffer of encoded
    records, never the dataset. ``directory`` may be a local folder or a TensorFlow
    filesystem URL (``gs://``, ``s3://``, ...).
    """
    names = [names] if isinstance(names, str) else names
    info = meta(directory)
    size = info["image_size"]
    paths = [f for name in names for f in files(directory, name)]
    parse = _parser(size, label_shape(info))
    ds = _records(paths, shuffle_seed)
    total = sum(info["counts"].get(name, 0) for name in names)
    if only is not None:
        if shuffle_seed is not None or len(only) != total:
            raise ValueError(f"only: one bool per record ({total}), unshuffled; got {len(only)}")
        keep = tf.constant(np.asarray(only, bool))
        ds = ds.enumerate().filter(lambda i, _: keep[i])
        ds = ds.map(lambda _, record: record)
        total = int(np.count_nonzero(only))
    # A known length gives Keras real progress bars and no "ran out of data" warnings.
    ds = ds.apply(tf.data.experimental.assert_cardinality(total))
    if shuffle_seed is not None:
        ds = ds.shuffle(4 * SHARD_SIZE, seed=shuffle_seed, reshuffle_each_iteration=True)
    # map is deterministic by default (tf.data keeps order), so features line up run to run
    ds = ds.map(parse, num_parallel_calls=parallel_calls()).batch(batch_size)
    if transform is not None:
        ds = ds.map(lambda x, y: (transform(x), y), num_parallel_calls=parallel_calls())
    untuned = tf.data.Options()
    untuned.autotune.enabled = False  # see parallel_calls
    return ds.prefetch(PREFETCH_BATCHES).with_options(untuned)
