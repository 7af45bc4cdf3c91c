#!/usr/bin/env python3
"""Image benchmark, side by side in one run:
  - pull a ~50 MB, 5-layer image from a local registry: ours (download, verify, unpack) vs `skopeo copy` into a
    directory (download and verify only);
  - unpack one gzip layer: ours (gunzip, diff-id hash, safe unpack, from the blob already stored) vs `tar -xzf`
    of the same file; storing the blob (write, hash, fsync) is timed apart.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.layers import docker_archive, entry, layer
from tests.registry import Registry

from hypercontainer.image import reference
from hypercontainer.image.pull import Puller
from hypercontainer.image.registry import Registry as Registry2
from hypercontainer.image.store import ImageStore

LAYERS, FILES_PER_LAYER, FILE_SIZE = 5, 40, 256 << 10  # 5 x 10 MiB of incompressible files


def make_layers() -> list[bytes]:
    return [layer(*(entry(f"l{i}/f{j}", data=os.urandom(FILE_SIZE)) for j in range(FILES_PER_LAYER)))
            for i in range(LAYERS)]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "11")))  # 5 was too noisy here
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hc-bench-img-"))
    reg = Registry()
    try:
        raw = make_layers()
        archive = work / "big.tar"
        archive.write_bytes(docker_archive(raw, tag="big:1", compress=True))
        reg.push(f"docker-archive:{archive}", "bench/big:1")
        ref = f"{reg.host}/bench/big:1"
        size = sum(len(gzip.compress(r, 1)) for r in raw)

        def ours() -> None:
            d = Path(tempfile.mkdtemp(dir=work))
            asyncio.run(Puller(ImageStore(d)).pull(ref))
            shutil.rmtree(d)

        def ours_transfer() -> None:
            """skopeo's job done by our registry client: manifest, config and layers into a directory."""
            d = Path(tempfile.mkdtemp(dir=work))

            async def go() -> None:
                r = reference.parse(ref)
                reg2 = Registry2(r.registry)
                try:
                    body, _, _ = await reg2.manifest(r)
                    m = json.loads(body)
                    blobs = [m["config"], *m["layers"]]
                    await asyncio.gather(*(reg2.blob(r, b["digest"], b["size"], d / b["digest"][7:])
                                           for b in blobs))
                finally:
                    await reg2.close()

            asyncio.run(go())
            shutil.rmtree(d)

        def skopeo() -> None:
            d = Path(tempfile.mkdtemp(dir=work))
            subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"dir:{d}/img"],
                           check=True)
            shutil.rmtree(d)

        blob = gzip.compress(raw[0], 1)
        layer_file = work / "layer.tar.gz"
        layer_file.write_bytes(blob)
        diff_id = "sha256:" + __import__("hashlib").sha256(raw[0]).hexdigest()

        def ours_unpack() -> tuple[float, float]:
            """(storing the blob: write, hash, fsync; then unpacking it: gunzip, diff-id hash, safe unpack, and
            removing what that made, as tar's row removes what tar made)."""
            d = Path(tempfile.mkdtemp(dir=work))
            store = ImageStore(d)
            t0 = time.perf_counter()
            digest = store.put_blob(blob)
            t1 = time.perf_counter()
            store.add_layer(digest, diff_id)
            shutil.rmtree(store.layer_dir(diff_id))
            t2 = time.perf_counter()
            shutil.rmtree(d)
            return t1 - t0, t2 - t1

        def tar_unpack() -> None:
            d = Path(tempfile.mkdtemp(dir=work))
            subprocess.run(["tar", "-xzf", str(layer_file), "-C", str(d)], check=True)
            shutil.rmtree(d)

        ours(), ours_transfer(), skopeo(), ours_unpack(), tar_unpack()  # warm up
        pulls, transfers, skopeos, stores, unpacks, tars = [], [], [], [], [], []
        for _ in range(args.runs):
            pulls.append(timed(ours))
            transfers.append(timed(ours_transfer))
            skopeos.append(timed(skopeo))
            stored, unpacked = ours_unpack()
            stores.append(stored)
            unpacks.append(unpacked)
            tars.append(timed(tar_unpack))
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)
    m = statistics.median
    print(f"image: {LAYERS} layers, {size / 1e6:.1f} MB compressed; {args.runs} runs each, medians\n")
    print(f"{'skopeo copy to dir (download + verify)':44s} {m(skopeos):6.3f} s")
    print(f"{'ours, the same job (download + verify)':44s} {m(transfers):6.3f} s")
    print(f"{'hyperctl pull (download + verify + unpack)':44s} {m(pulls):6.3f} s")
    print(f"{'ratio ours / skopeo, same job':44s} {m(transfers) / m(skopeos):6.2f}   (target <= 1.25)")
    print(f"{'ratio full pull / skopeo':44s} {m(pulls) / m(skopeos):6.2f}\n")
    print(f"{'store one layer blob, ours (write, fsync)':44s} {m(stores):6.3f} s   (before unpacking: not timed in it)")
    print(f"{'unpack that layer, ours':44s} {m(unpacks):6.3f} s")
    print(f"{'tar -xzf':44s} {m(tars):6.3f} s")
    print(f"{'ratio ours / tar':44s} {m(unpacks) / m(tars):6.2f}   (target <= 1.25)")


if __name__ == "__main__":
    main()
