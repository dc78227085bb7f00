"""A store with many images and records: `cache ls` (usage) and prune stay correct.

Root-free: images and records are made through Store, image.write and Cache.put, as
bench/bigstore.py does at 1,000 images and 10,000 records (that one is timed, this one
only checked).
"""

from __future__ import annotations

import time
from pathlib import Path

from pybuild import image as imagemod
from pybuild.layer import write_layer
from pybuild.solver.cache import Cache, Record
from pybuild.solver.usage import prune, tagged_layers, usage
from pybuild.store import Descriptor, Store


def _store(tmp_path: Path, images: int, records: int) -> tuple[Store, list[Descriptor]]:
    store = Store(tmp_path / "store")
    cache = Cache(store)
    layers: list[Descriptor] = []
    for i in range(images + 5):  # 5 layers no image uses
        src = tmp_path / f"l{i}"
        src.mkdir()
        (src / "f").write_text(f"layer {i}\n")
        with store.writer() as w:
            info = write_layer(src, w)
            desc = w.commit(info.media_type)
        layer = Descriptor(info.media_type, desc.digest, desc.size)
        layers.append(layer)
        if i < images:
            config = {"architecture": "amd64", "os": "linux", "config": {},
                      "rootfs": {"type": "layers", "diff_ids": [info.diff_id]}}
            store.set_tag(f"img{i}:latest", imagemod.write(store, config, [layer]))
    now = time.time()
    for j in range(records):
        layer = layers[j % len(layers)]
        cache.put(Record(f"sha256:{j:064x}", "", f"slot{j}", f"step {j}", layer, "d", "c",
                         {"run": str(j)}, now - j, now - j, step=f"s{j}"))
    return store, layers


def test_usage_names_every_user_with_many_images(tmp_path: Path) -> None:
    store, layers = _store(tmp_path, images=40, records=180)
    users, chains = tagged_layers(store)
    assert len(users) == 40 and len(chains) == 40
    u = usage(store)
    assert len(u.records) == 180
    for r in u.records:
        index = layers.index(r.layer)
        expected = [f"img{index}:latest"] if index < 40 else []
        assert u.used_by[r.key] == expected


def test_prune_keeps_what_tags_use_with_many_images(tmp_path: Path) -> None:
    store, layers = _store(tmp_path, images=40, records=180)
    dry = prune(store, dry_run=True)
    unused = {layers[i].digest for i in range(40, 45)}
    assert {r.layer.digest for r in dry.records} == unused
    assert len(Cache(store).all()) == 180  # a dry run removes nothing
    done = prune(store)
    assert {r.key for r in done.records} == {r.key for r in dry.records}
    left = Cache(store).all()
    assert len(left) == 180 - len(dry.records)
    assert all(store.has_blob(r.layer.digest) for r in left)
    assert not any(store.has_blob(d) for d in unused)
