"""Prepared (decoded) data against the JPEG path: training input images per CPU-second, disk size, build time.

    python benchmarks/prepared_data.py                                  # 512 photos, 224/64/32 px, 3 repeats
    python benchmarks/prepared_data.py --num_images=256 --resolutions=224 --repeats=1 --json=out.json

Writes ``--num_images`` photo-like JPEGs (500x375 tiles of scikit-learn's china.jpg and flower.jpg at random offsets,
mirrored at random, with +-4 levels of grain, quality 97: about 110 kB each, as ImageNet's), prepares them with
``regnet_jax.data.build_prepared`` for each resolution (shorter side ``default_short_side``: 258, 74, 37 px; raw
pixels, and JPEG quality 95 at 224 px for comparison), then times the trainer's input pipeline
(``regnet_jax.benchmarking.input_pipeline.measure``: crop, resize, flip, batches of 64 uint8 images with their
lighting shifts; normalisation runs on the device, not timed) from each, in a fresh process pinned to one core
(``taskset -c CORE``, one tf.data thread), ``--repeats`` times.

Reported: images per CPU-second of the pipeline (the process's CPU time over the timed batches, all threads: the
figure that holds on a loaded machine) and wall-clock images/s (which a loaded machine lowers), medians of the
repeats; the build's wall time and CPU time per 1000 images (pinned to the same core) and the prepared bytes per
image. The load average is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (500, 375)  # width x height


def write_photos(root: str, n: int, seed: int = 0) -> int:
    """``n`` photo-like JPEGs in ROOT/train/class{0..3}/ (and 8 in ROOT/val/); returns the train bytes."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    rng = np.random.default_rng(seed)
    w, h = SIZE
    total = 0
    for split, count in (("train", n), ("val", 8)):
        for i in range(count):
            im = images[i % len(images)]
            y, x = rng.integers(0, im.shape[0] - h + 1), rng.integers(0, im.shape[1] - w + 1)
            tile = im[y : y + h, x : x + w].astype(np.int16)
            if rng.random() < 0.5:
                tile = tile[:, ::-1]
            tile = np.clip(tile + rng.integers(-4, 5, tile.shape), 0, 255).astype(np.uint8)
            d = os.path.join(root, split, f"class{i % 4}")
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, f"img{i:05d}.jpg")
            Image.fromarray(tile).save(path, quality=97)
            total += os.path.getsize(path) if split == "train" else 0
    return total


def _pinned(core: int, code: str) -> dict:
    """Run ``code`` (prints one JSON line last) in a fresh Python pinned to ``core``."""
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        ["taskset", "-c", str(core), sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


BUILD = """
import json, resource, time
from regnet_jax.data import build_prepared
from regnet_jax.models import zoo
c = zoo.get_config("regnetx_200mf")
c.resolution, c.dataset.name, c.dataset.data_dir, c.dataset.eval_split = {res}, "folder", {root!r}, "val"
t, r = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
index = build_prepared.build(c, {out!r}, {short}, ["train"], encoding={encoding!r}, jpeg_quality=95)
r2 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps(dict(wall=time.perf_counter() - t, cpu=r2.ru_utime + r2.ru_stime - r.ru_utime - r.ru_stime,
                      images=index["splits"]["train"]["num_examples"], bytes=index["bytes"])))
"""

MEASURE = """
import json
from regnet_jax.benchmarking.input_pipeline import measure
print(json.dumps(measure({root!r}, threads=1, resolution={res}, batch=64, batches={batches}, prepared_dir={prepared!r})))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_images", type=int, default=512)
    p.add_argument("--resolutions", default="224,64,32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=16, help="timed batches of 64 per measurement")
    p.add_argument("--core", type=int, default=0)
    p.add_argument("--dir", default="", help="work directory (default: a temporary one)")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args()
    sys.path.insert(0, REPO)
    from regnet_jax.data.build_prepared import default_short_side
    from regnet_jax.models import zoo

    work = args.dir or tempfile.mkdtemp(prefix="prepared_bench_")
    root = os.path.join(work, "jpeg")
    if not os.path.isdir(root):
        jpeg_bytes = write_photos(root, args.num_images)
    else:
        jpeg_bytes = sum(
            os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(root, "train")) for f in fs
        )
    print(f"{args.num_images} JPEGs, {jpeg_bytes / args.num_images / 1e3:.0f} kB each, in {root}", flush=True)
    results = {"load_before": os.getloadavg(), "jpeg_bytes_per_image": jpeg_bytes / args.num_images, "rows": []}
    for res in map(int, args.resolutions.split(",")):
        config = zoo.get_config("regnetx_200mf")
        config.resolution = res
        short = default_short_side(config)
        variants = [("JPEG", "")]
        encodings = ["raw", "jpeg"] if res == 224 else ["raw"]
        for encoding in encodings:
            out = os.path.join(work, f"prepared_{short}_{encoding}")
            if not os.path.exists(os.path.join(out, "index.json")):
                b = _pinned(args.core, BUILD.format(res=res, root=root, out=out, short=short, encoding=encoding))
                results["rows"].append({"what": "build", "res": res, "short_side": short, "encoding": encoding, **b,
                                        "bytes_per_image": b["bytes"] / b["images"], "wall_s_per_1000": 1000 * b["wall"] / b["images"],
                                        "cpu_s_per_1000": 1000 * b["cpu"] / b["images"]})  # fmt: skip
                print(json.dumps(results["rows"][-1]), flush=True)
            variants.append((f"prepared {short} px {encoding}", out))
        for name, prepared in variants:
            code = MEASURE.format(root=root, res=res, batches=args.batches, prepared=prepared)
            runs = [_pinned(args.core, code) for _ in range(args.repeats)]
            row = {"what": name, "res": res, "images_per_cpu_s": statistics.median(r["images_per_cpu_s"] for r in runs),
                   "images_per_s": statistics.median(r["images_per_s"] for r in runs), "runs": runs}  # fmt: skip
            results["rows"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    print("\n| resolution | input | images / CPU-second | wall images/s | vs JPEG |")
    print("|---|---|---|---|---|")
    base = {}
    for r in results["rows"]:
        if r["what"] == "build":
            continue
        if r["what"] == "JPEG":
            base[r["res"]] = r["images_per_cpu_s"]
        print(
            f"| {r['res']} | {r['what']} | {r['images_per_cpu_s']:.0f} | {r['images_per_s']:.0f} | {r['images_per_cpu_s'] / base[r['res']]:.1f}x |"
        )
    print("\n| shorter side | encoding | bytes / image | build CPU s / 1000 images | build wall s / 1000 images |")
    print("|---|---|---|---|---|")
    for r in results["rows"]:
        if r["what"] == "build":
            print(
                f"| {r['short_side']} | {r['encoding']} | {r['bytes_per_image'] / 1024:.1f} KiB | {r['cpu_s_per_1000']:.1f} | {r['wall_s_per_1000']:.1f} |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
