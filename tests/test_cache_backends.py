"""Cache backends beside type=registry: type=local (BuildKit's cache format in an OCI layout
directory, checked against BuildKit's spec, read back by a second store and by skopeo) and type=inline (the cache inside the pushed image's config)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conftest import Pybuild, require_build_tools, store_snapshot
from engines import registry_server
from pybuild.errors import PybuildError
from pybuild.oci_documents import LAYER_TYPES
from pybuild.solver import local_cache
from pybuild.solver.cache import Record
from pybuild.store import OCI_INDEX, OCI_MANIFEST, REF_NAME, Descriptor, Store
from pybuild.solver.remote_cache import CacheSpec, parse_cache_spec


def _digest(pb: Pybuild, name: str) -> str:
    return str(json.loads(pb("inspect", name).stdout)[0]["ManifestDigest"])


def test_specs_parse() -> None:
    assert parse_cache_spec("type=local,dest=/c", "--cache-to") == CacheSpec("/c", "min", "local")
    assert parse_cache_spec("type=local,src=/c,tag=v2", "--cache-from") == \
        CacheSpec("/c", "min", "local", "v2")
    assert parse_cache_spec("type=inline", "--cache-to").type == "inline"
    assert not parse_cache_spec("type=local,dest=/c,image-manifest=false", "--cache-to").image_manifest
    assert parse_cache_spec("type=local,dest=/c,reset=true,oci-mediatypes=true", "--cache-to").reset
    assert parse_cache_spec("type=local,src=/c,digest=" + _h("a"), "--cache-from").digest == _h("a")
    for value, flag, message in [("type=local", "--cache-to", "dest= is required"),
                                 ("type=local,dest=/c", "--cache-from", "src= is required"),
                                 ("type=inline", "--cache-from", "is written by --cache-to"),
                                 ("type=inline,mode=max", "--cache-to", "only supports mode=min"),
                                 ("type=gha", "--cache-to", "unsupported cache type"),
                                 ("type=local,dest=/c,compression=zstd", "--cache-to",
                                  "type=local has no option 'compression'"),
                                 ("type=local,src=/c,image-manifest=true", "--cache-from",
                                  "no option 'image-manifest'"),
                                 ("type=local,dest=/c,image-manifest=maybe", "--cache-to",
                                  "image-manifest must be true or false"),
                                 ("type=local,src=/c,digest=sha256:../x", "--cache-from",
                                  "digest"),
                                 ("type=local,dest=/c,oci-mediatypes=false", "--cache-to",
                                  "oci-mediatypes=false is not supported")]:
        with pytest.raises(PybuildError, match=message):
            parse_cache_spec(value, flag)


def _same_base(src: Pybuild, dst: Pybuild, tmp_path: Path) -> None:
    """The very same busybox manifest in `dst` (an OCI archive keeps manifest bytes)."""
    archive = tmp_path / f"base-{dst.root.name}.tar"
    src("save", "--format", "oci", "-o", str(archive), "busybox")
    dst("load", "-i", str(archive))
    assert _digest(dst, "busybox") == _digest(src, "busybox")


def _context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("data\n")
    (ctx / "Dockerfile").write_text(
        "FROM busybox AS build\nRUN echo built > /artifact\n"
        "FROM busybox\nCOPY f /f\nCOPY --from=build /artifact /a\nRUN cat /f /a > /both\n")
    return ctx


# ---- BuildKit's cache format, as moby/buildkit cache/remotecache/v1/types/spec.go and
# doc.go define it and client/ociindex writes index.json --------------------------------

_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
_HEX = re.compile(r"sha256:[0-9a-f]{64}$")


def _blob(layout: Path, digest: str, size: int) -> bytes:
    assert _HEX.match(digest), digest
    data = (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()
    assert len(data) == size and "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def buildkit_cache(layout: Path, tag: str = "latest") -> dict[str, Any]:
    """Check `layout` against BuildKit's local cache format; returns the cache config.

    Every field named as spec.go names it (its json tags), nothing else; every index in
    range; every blob present and matching its digest."""
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    entries = [m for m in index["manifests"] if m["annotations"] == {REF_NAME: tag}]
    assert len(entries) == 1, index
    entry = entries[0]
    assert entry["mediaType"] == OCI_MANIFEST
    manifest = json.loads(_blob(layout, entry["digest"], entry["size"]))
    assert set(manifest) == {"schemaVersion", "mediaType", "config", "layers"}
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == "application/vnd.buildkit.cacheconfig.v0"
    described = {}
    for d in manifest["layers"]:
        assert d["mediaType"] in LAYER_TYPES
        _blob(layout, d["digest"], d["size"])
        assert set(d["annotations"]) <= {"containerd.io/uncompressed", "buildkit/createdat",
                                         "buildkit/description"}
        assert _HEX.match(d["annotations"]["containerd.io/uncompressed"])
        assert _RFC3339.match(d["annotations"]["buildkit/createdat"])
        described[d["digest"]] = d
    config = json.loads(_blob(layout, manifest["config"]["digest"], manifest["config"]["size"]))
    assert set(config) <= {"layers", "records"}
    layers, records = config["layers"], config["records"]
    for la in layers:
        assert set(la) <= {"blob", "parent", "annotations"} and la["blob"] in described
        # `parent,omitempty`: -1 is "no parent", 0 is left out
        assert la.get("parent", 0) == -1 or 0 <= la.get("parent", 0) < len(layers)
        assert la.get("parent", "absent") != 0
    for r in records:
        assert set(r) <= {"digest", "inputs", "layers", "chains"} and _HEX.match(r["digest"])
        for group in r.get("inputs", []):
            assert group and all(set(i) <= {"selector", "link"} and
                                 0 <= i["link"] < len(records) for i in group)
        for res in r.get("layers", []):
            assert set(res) == {"layer", "createdAt"} and 0 <= res["layer"] < len(layers)
            assert _RFC3339.match(res["createdAt"])
    assert [r["digest"] for r in records] == sorted(r["digest"] for r in records)
    return dict(config)


def _chain(config: dict[str, Any], at: int) -> list[str]:
    out = []
    while at != -1:
        out.insert(0, config["layers"][at]["blob"])
        at = config["layers"][at].get("parent", 0)
    return out


def _rec(key: str, parent: str, blob: str, diff: str) -> Record:
    layer = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", blob, 10)
    return Record(key, parent, "", f"step {key[-1]}", layer, diff, "", {}, 1795825357.25,
                  1795825357.25)


def _h(c: str) -> str:
    return "sha256:" + c * 64


def test_cache_config_is_buildkits_shape_and_reads_back(tmp_path: Path) -> None:
    """Root-free: three steps on a base, one sharing a blob with another chain; the
    written config is BuildKit's shape, its chains are each step's filesystem, and reading
    it gives the records back."""
    store = Store(tmp_path / "store")
    blobs = {}
    for c in "abc":
        blobs[c] = store.put_bytes(c.encode() * 10, "x").digest
    base = _h("0")
    records = [_rec(_h("1"), base, blobs["a"], _h("d")), _rec(_h("2"), _h("1"), blobs["b"], _h("e")),
               _rec(_h("3"), _h("2"), blobs["c"], _h("f")), _rec(_h("4"), base, blobs["b"], _h("e"))]
    before = store_snapshot(store.root)
    digest = local_cache.export(store, str(tmp_path / "c"), "v1", records)
    assert store_snapshot(store.root) == before  # the cache documents go to DIR only
    config = buildkit_cache(tmp_path / "c", "v1")
    by_digest = {r["digest"]: r for r in config["records"]}
    assert by_digest[base] == {"digest": base}  # the base: a key without a result
    top = by_digest[_h("3")]
    assert top["inputs"] == [[{"link": sorted(by_digest).index(_h("2"))}]]
    assert _chain(config, top["layers"][0]["layer"]) == [blobs["a"], blobs["b"], blobs["c"]]
    assert _chain(config, by_digest[_h("4")]["layers"][0]["layer"]) == [blobs["b"]]
    assert top["layers"][0]["createdAt"] == "2026-11-28T00:22:37.25Z"  # date -u -d @1795825357.25
    back = local_cache.load(str(tmp_path / "c"), "v1")
    assert set(back) == {r.key for r in records}
    for r in records:
        got = back[r.key]
        assert (got.parent, got.layer, got.diff_id, got.created) == \
            (r.parent, r.layer, r.diff_id, r.created)
    # the description rides on the layer (buildkit/description): a shared blob has one
    assert [back[r.key].description for r in records] == ["step 1", "step 2", "step 3", "step 2"]
    # the same records give the same bytes; a second tag keeps the first
    assert local_cache.export(store, str(tmp_path / "c"), "v1", records[::-1]) == digest
    local_cache.export(store, str(tmp_path / "c"), "v2", records[:1])
    buildkit_cache(tmp_path / "c", "v1")
    assert len(buildkit_cache(tmp_path / "c", "v2")["records"]) == 2
    # image-manifest=false: BuildKit's index shape, read back the same; digest= instead of a tag
    idx = local_cache.export(store, str(tmp_path / "c"), "idx", records, image_manifest=False)
    entry = [m for m in json.loads((tmp_path / "c" / "index.json").read_text())["manifests"]
             if m["annotations"] == {REF_NAME: "idx"}][0]
    doc = json.loads(_blob(tmp_path / "c", idx, entry["size"]))
    assert entry["mediaType"] == doc["mediaType"] == OCI_INDEX
    assert [m["mediaType"] for m in doc["manifests"]][-1] == "application/vnd.buildkit.cacheconfig.v0"
    assert local_cache.load(str(tmp_path / "c"), "idx") == back
    assert local_cache.load(str(tmp_path / "c"), "no-such-tag", digest) == back
    assert local_cache.load(str(tmp_path / "c"), "no-such-tag", idx) == back
    # reset=true: the blobs no tag reaches any more go (here: tag r moved to one record)
    local_cache.export(store, str(tmp_path / "r"), "r", records)
    local_cache.export(store, str(tmp_path / "r"), "r", records[:1], reset=True)
    config = buildkit_cache(tmp_path / "r", "r")
    manifest = json.loads((tmp_path / "r" / "index.json").read_text())["manifests"][0]
    left = {"sha256:" + n for n in os.listdir(tmp_path / "r" / "blobs" / "sha256")}
    assert left == {manifest["digest"], blobs["a"],
                    json.loads(_blob(tmp_path / "r", manifest["digest"],
                                     manifest["size"]))["config"]["digest"]}
    assert len(config["records"]) == 2
    # exports into one directory at once (CI jobs sharing a cache dir) keep every tag
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: local_cache.export(store, str(tmp_path / "c"), f"t{i}",
                                                   records[:1 + i % 4]), range(8)))
    for i in range(8):
        buildkit_cache(tmp_path / "c", f"t{i}")
    assert sorted(os.listdir(tmp_path / "c")) == ["blobs", "index.json", "oci-layout"]


def _layout(root: Path, config: dict[str, Any], layers: list[dict[str, Any]],
            index_form: bool = False, tag: str = "latest", typed: bool = True) -> Path:
    """A cache as BuildKit writes it, built by hand from the spec."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> dict[str, Any]:
        h = hashlib.sha256(data).hexdigest()
        (blobs / h).write_bytes(data)
        return {"digest": "sha256:" + h, "size": len(data)}

    cfg = {"mediaType": "application/vnd.buildkit.cacheconfig.v0"} | put(json.dumps(config).encode())
    if index_form:  # image-manifest=false: an index listing the layers and the config
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*layers, cfg]}
    else:
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": layers}
    media_type = doc["mediaType"]
    if not typed:  # optional in the document (the index entry names it, or it is inferred)
        del doc["mediaType"]
    m = {"mediaType": media_type} | put(json.dumps(doc).encode())
    (root / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX,
         "manifests": [m | {"annotations": {REF_NAME: tag}}]}))
    return root


def _gz_layer(root: Path, body: bytes) -> dict[str, Any]:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    data = gzip.compress(body, mtime=0)
    h = hashlib.sha256(data).hexdigest()
    (blobs / h).write_bytes(data)
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": "sha256:" + h, "size": len(data),
            "annotations": {"containerd.io/uncompressed": "sha256:" + hashlib.sha256(body).hexdigest(),
                            "buildkit/createdat": "2024-05-01T10:11:12.123456789Z"}}


def test_a_buildkit_written_cache_reads(tmp_path: Path) -> None:
    """Both of BuildKit's manifest shapes, with selectors, several inputs, a result-less
    source record and a chain of two layers: every record with a described result reads."""
    for index_form, typed in ((False, True), (True, True), (False, False), (True, False)):
        root = tmp_path / f"bk{index_form}{typed}"
        l1, l2 = _gz_layer(root, b"one" * 100), _gz_layer(root, b"two" * 100)
        config = {"layers": [{"blob": l1["digest"], "parent": -1}, {"blob": l2["digest"]}],
                  "records": [{"digest": _h("a")},
                              {"digest": _h("b"), "inputs": [[{"selector": "sha256:" + "9" * 64,
                                                              "link": 0}]],
                               "layers": [{"layer": 0, "createdAt": "2024-05-01T10:11:12Z"}]},
                              {"digest": _h("c"), "inputs": [[{"link": 1}], [{"link": 0}]],
                               "layers": [{"layer": 1, "createdAt": "2024-05-01T10:11:12.5Z"}]},
                              {"digest": _h("d"), "layers": [{"layer": 1,  # Go's zero time
                                                                "createdAt": "0001-01-01T00:00:00Z"}],
                               "chains": [{"layers": [0, 1]}]}]}
        got = local_cache.load(str(_layout(root, config, [l1, l2], index_form, typed=typed)),
                               "latest")
        entry = json.loads((root / "index.json").read_text())["manifests"][0]
        assert local_cache.load(str(root), "", entry["digest"]) == got  # digest=: inferred
        assert sorted(got) == [_h("b"), _h("c"), _h("d")]
        assert got[_h("c")].layer.digest == l2["digest"] and got[_h("c")].parent == _h("b")
        assert got[_h("c")].created == 1714558272.5
        assert got[_h("d")].created == 1714558272.123456  # from buildkit/createdat
        assert got[_h("b")].diff_id == l1["annotations"]["containerd.io/uncompressed"]


@pytest.mark.parametrize("change,message", [
    ({"layers": [{"blob": "sha256:../../etc/passwd", "parent": -1}]}, "layer 0: "),
    ({"layers": [{"blob": "L1", "parent": 7}]}, "layer 0 parent 7 points outside"),
    ({"layers": [{"blob": "L1"}]}, "layer 0: its chain loops"),  # parent 0 is itself
    ({"records": [{"digest": _h("a"), "layers": [{"layer": 3}]}]}, "record 0 layer 3 points outside"),
    ({"records": [{"digest": _h("a"), "inputs": [[{"link": 5}]]}]}, "record 0 link 5 points outside"),
    ({"records": [{"digest": _h("a"), "inputs": [[{"link": 1}]]},
                  {"digest": _h("b"), "inputs": [[{"link": 0}]]}]}, "its inputs loop"),
    ({"records": [{"digest": _h("a"), "inputs": [[]]}]}, "record 0: an input is empty"),
    ({"records": [{"digest": "md5:abc"}]}, "record 0: "),
    ({"records": "all"}, "must be lists"),
])
def test_hostile_cache_configs_are_refused(tmp_path: Path, change: dict[str, Any],
                                           message: str) -> None:
    l1 = _gz_layer(tmp_path, b"one")
    config = {"layers": [{"blob": l1["digest"], "parent": -1}],
              "records": [{"digest": _h("a"), "layers": [{"layer": 0}]}]} | change
    config["layers"] = [la | {"blob": l1["digest"]} if la.get("blob") == "L1" else la
                        for la in config["layers"]]
    with pytest.raises(PybuildError, match=re.escape(message)) as e:
        local_cache.load(str(_layout(tmp_path, config, [l1])), "latest")
    assert "\n" not in str(e.value) and str(e.value).startswith("--cache-from type=local,src=")


def test_a_long_layer_chain_is_read_in_one_pass() -> None:
    """A hostile cache of 100,000 chained layers (a loop only at the far end) is checked
    by walking each layer once: the old walk from every layer was quadratic (hours)."""
    blob = _h("e")
    n = 100_000
    chain = [{"blob": blob, "parent": i - 1} for i in range(n)]
    chain[0]["parent"] = -1
    assert local_cache.parse_config({"layers": chain, "records": []}, {}, "x") == {}
    chain[0]["parent"] = n - 1  # the chain now loops through every layer
    with pytest.raises(PybuildError, match="x: cache config: layer 0: its chain loops"):
        local_cache.parse_config({"layers": chain, "records": []}, {}, "x")


def test_hostile_layouts_are_refused(tmp_path: Path) -> None:
    l1 = _gz_layer(tmp_path, b"one")
    config = {"layers": [{"blob": l1["digest"], "parent": -1}],
              "records": [{"digest": _h("a"), "layers": [{"layer": 0}]}]}
    root = _layout(tmp_path, config, [l1])
    src = str(root)
    index = json.loads((root / "index.json").read_text())
    entry = index["manifests"][0]
    manifest_path = root / "blobs" / "sha256" / entry["digest"].split(":")[1]
    manifest = json.loads(manifest_path.read_text())
    # a manifest whose bytes are not its digest
    manifest_path.write_bytes(manifest_path.read_bytes() + b" ")
    with pytest.raises(PybuildError, match="does not match its digest"):
        local_cache.load(src, "latest")
    manifest_path.write_text(json.dumps(manifest))
    # an index entry naming a path instead of a digest
    (root / "index.json").write_text(json.dumps(index | {"manifests": [
        entry | {"digest": "sha256:../../../../etc/passwd"}]}))
    with pytest.raises(PybuildError, match="malformed|sha256"):
        local_cache.load(src, "latest")
    # a blob symlinked out of the layout resolves inside it: missing
    (root / "index.json").write_text(json.dumps(index))
    cfg_path = root / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]
    cfg_path.unlink()
    cfg_path.symlink_to("/etc/passwd")
    with pytest.raises(PybuildError, match="is missing"):
        local_cache.load(src, "latest")
    # pybuild's own older format (or any other config) is named, not misread
    other = _layout(tmp_path / "other", config, [l1])
    m = json.loads((other / "index.json").read_text())["manifests"][0]
    mp = other / "blobs" / "sha256" / m["digest"].split(":")[1]
    doc = json.loads(mp.read_text())
    doc["config"]["mediaType"] = "application/vnd.pybuild.cache.config.v1+json"
    mp.unlink()
    _layout(other, config, [l1])  # rewrite then patch the config media type via a new manifest
    data = json.dumps(doc).encode()
    h = hashlib.sha256(data).hexdigest()
    (other / "blobs" / "sha256" / h).write_bytes(data)
    (other / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + h, "size": len(data),
         "annotations": {REF_NAME: "latest"}}]}))
    with pytest.raises(PybuildError, match="is not a BuildKit cache"):
        local_cache.load(str(other), "latest")
    assert local_cache.load(str(other), "nosuchtag") == {}
    assert local_cache.load(str(tmp_path / "absent"), "latest") == {}


def test_local_cache_round_trip_gives_the_same_image(busybox: Pybuild, busybox_tar: Path,
                                                     tmp_path: Path) -> None:
    """A BuildKit-format cache exported by one store, imported by an empty one: its blobs
    read back, every step cached, the same image digest; mode=min exports fewer records."""
    ctx = _context(tmp_path)
    cache = tmp_path / "cache"
    busybox("build", "-t", "app", "--cache-to", f"type=local,dest={cache},mode=max", str(ctx))
    busybox("build", "-t", "app", "--cache-to", f"type=local,dest={cache},tag=min", str(ctx))
    config = buildkit_cache(cache)
    with_layers = [r for r in config["records"] if r.get("layers")]
    assert len(with_layers) == 4  # every step of both stages
    assert len([r for r in buildkit_cache(cache, "min")["records"] if r.get("layers")]) == 3
    if shutil.which("skopeo"):  # an OCI layout any tool reads
        raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{cache}:latest"],
                             capture_output=True, text=True, check=True).stdout
        assert json.loads(raw)["config"]["mediaType"] == "application/vnd.buildkit.cacheconfig.v0"
    second = Pybuild(tmp_path / "two")
    _same_base(busybox, second, tmp_path)
    proc = second("build", "-t", "app", "--cache-from", f"type=local,src={cache}",
                  "--progress", "plain", str(ctx))
    assert proc.stderr.count("CACHED") == 4, proc.stderr
    assert _digest(second, "app") == _digest(busybox, "app")
    entry = json.loads((cache / "index.json").read_text())["manifests"][0]
    cached = {d["digest"] for d in json.loads(_blob(cache, entry["digest"],
                                                    entry["size"]))["layers"]}
    image_manifest = json.loads((second.root / "blobs" / "sha256" /
                                 _digest(second, "app").split(":")[1]).read_text())
    from_cache = [d["digest"] for d in image_manifest["layers"] if d["digest"] in cached]
    assert len(from_cache) == 3  # the final stage's layers were read back from the cache...
    assert all((second.root / "blobs" / "sha256" / d.split(":")[1]).is_file() for d in from_cache)
    # ...and only what was needed: the build stage's layer stays in the cache (lazy)
    assert not any((second.root / "blobs" / "sha256" / d.split(":")[1]).exists()
                   for d in cached - set(from_cache))
    assert second("doctor").returncode == 0
    # an empty or absent cache dir is no error (nothing exported there yet)
    third = Pybuild(tmp_path / "three")
    third("import", str(busybox_tar), "busybox")
    third("build", "--cache-from", f"type=local,src={tmp_path}/nothing", str(ctx))


def test_tampered_local_cache_is_refused(busybox: Pybuild, busybox_tar: Path,
                                         tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    cache = tmp_path / "cache"
    busybox("build", "--cache-to", f"type=local,dest={cache}", str(ctx))
    index = json.loads((cache / "index.json").read_text())
    manifest = json.loads((cache / "blobs" / "sha256" /
                           index["manifests"][0]["digest"].split(":")[1]).read_text())
    layer = manifest["layers"][-1]["digest"].split(":")[1]
    (cache / "blobs" / "sha256" / layer).write_bytes(b"\x1f\x8b not the layer")
    second = Pybuild(tmp_path / "two")
    _same_base(busybox, second, tmp_path)
    before = store_snapshot(second.root)
    proc = second("build", "--cache-from", f"type=local,src={cache}", str(ctx), check=False)
    # the damaged layer is never used: its record fails when fetched, one clear line
    assert proc.returncode == 1 and "digest mismatch" in proc.stderr
    assert {k for k in store_snapshot(second.root) if k.startswith("blobs")} >= \
        {k for k in before if k.startswith("blobs")}
    # a config whose record points outside it: refused before anything is built
    cfg = cache / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]
    doc = json.loads(cfg.read_text())
    doc["records"][-1]["inputs"] = [[{"link": 99}]]
    _layout(cache, doc, manifest["layers"])
    second("image", "prune", "-f")
    before = store_snapshot(second.root)
    proc = second("build", "--cache-from", f"type=local,src={cache}", str(ctx), check=False)
    assert proc.returncode == 1 and "link 99 points outside" in proc.stderr, proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if "99" in ln]) == 1
    assert "Traceback" not in proc.stderr
    after = store_snapshot(second.root)
    assert {k: v for k, v in after.items() if k.startswith(("blobs", "index.json"))} == \
        {k: v for k, v in before.items() if k.startswith(("blobs", "index.json"))}
    (cache / "index.json").write_text("{nope")
    proc = second("build", "--cache-from", f"type=local,src={cache}", str(ctx), check=False)
    assert proc.returncode == 1 and "index.json is not valid JSON" in proc.stderr


def test_inline_cache_through_a_registry(busybox: Pybuild, busybox_tar: Path,
                                         tmp_path: Path) -> None:
    require_build_tools()
    ctx = _context(tmp_path)
    with registry_server() as reg:
        busybox("build", "--insecure-registry", reg, "-t", f"{reg}/app/inline:1", "--push",
                "--cache-to", "type=inline", str(ctx))
        cfg = json.loads(busybox("inspect", f"{reg}/app/inline:1").stdout)[0]["Config"]
        assert cfg["io.pybuild.cache.v1"]["records"]
        second = Pybuild(tmp_path / "two")
        _same_base(busybox, second, tmp_path)
        proc = second("build", "--insecure-registry", reg, "-t", "again", "--cache-from",
                      f"{reg}/app/inline:1", "--cache-to", "type=inline", "--progress", "plain",
                      str(ctx))
        # mode=min: the final stage's steps come from the image; the build stage reruns
        assert proc.stderr.count("CACHED") == 3, proc.stderr
        assert _digest(second, "again") == _digest(busybox, f"{reg}/app/inline:1")
