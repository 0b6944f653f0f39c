#!/usr/bin/env python3
"""A model repository as inference servers load it, for the mount tests.

    safetensors_check.py write DIR SEED [SCALE [ADAPTERS]]
                                          a checkpoint of many tensors
                                          (several dtypes and shapes) and
                                          ADAPTERS adapters (default 4),
                                          written with the safetensors
                                          package
    safetensors_check.py load DIR SEED [SCALE]
                                          the same load without the
                                          comparison (the bench's timing:
                                          what a server does)
    safetensors_check.py seq DIR SEED [SCALE]
                                          a plain sequential read of every
                                          file, 1 MiB at a time (the other
                                          way models are loaded)
    safetensors_check.py check DIR SEED [SCALE [ADAPTERS]]
                                          load every file the way servers
                                          do, safe_open(framework="numpy")
                                          over mmap, touching every tensor
                                          in a shuffled order, and compare
                                          each with what SEED makes

SCALE (default 64) sizes the checkpoint shards: about 1.25 MiB of tensors
per unit each. Prints one line: files, tensors and bytes checked. Any
tensor that differs is an error naming it.
"""
import os
import sys
import time

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

DTYPES = [np.float32, np.float16, np.int8, np.int64, np.uint8]


def tensors(seed, count, scale):
    """The tensors of one file: names, dtypes and shapes from `seed`."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(count):
        dtype = DTYPES[i % len(DTYPES)]
        shape = (int(rng.integers(1, 64)) * scale, int(rng.integers(1, 512)))
        if np.issubdtype(dtype, np.floating):
            data = rng.standard_normal(shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            data = rng.integers(info.min, info.max, size=shape, dtype=dtype)
        out[f"layers.{i}.{np.dtype(dtype).name}.weight"] = data
    return out


def repository(seed, scale, adapters=4):
    """File name -> tensors: a checkpoint in two shards and adapters."""
    files = {
        f"model-0000{k}-of-00002.safetensors": tensors(seed * 10 + k, 48, scale) for k in (1, 2)
    }
    for a in range(adapters):
        files[f"adapters/lora-{a}.safetensors"] = tensors(seed * 100 + a, 12, 1)
    return files


class Parts:
    """Seconds and bytes of the checkpoint and of the adapters, apart: the
    bench reports each against the link (one is bandwidth-bound, the
    other latency-bound)."""

    def __init__(self):
        self.seconds = {"checkpoint": 0.0, "adapters": 0.0}
        self.bytes = {"checkpoint": 0, "adapters": 0}

    def add(self, name, started, nbytes):
        part = "adapters" if os.path.basename(os.path.dirname(name)) == "adapters" else "checkpoint"
        self.seconds[part] += time.monotonic() - started
        self.bytes[part] += nbytes

    def __str__(self):
        return " ".join(f"{p}={self.seconds[p]:.3f}s/{self.bytes[p]}B" for p in self.seconds)


def sequential(root):
    """Read every file start to end, 1 MiB at a time."""
    nbytes = files = 0
    parts = Parts()
    for d, _, fs in os.walk(root):
        for name in fs:
            if name.endswith(".safetensors"):
                started, before = time.monotonic(), nbytes
                with open(os.path.join(d, name), "rb") as f:
                    while block := f.read(1 << 20):
                        nbytes += len(block)
                parts.add(os.path.join(d, name), started, nbytes - before)
                files += 1
    print(f"read {files} files, {nbytes} bytes")
    print(f"parts {parts}")


def load(root, seed):
    """Read every tensor of every file, in a shuffled order, and nothing
    more: what a server's load costs."""
    order = np.random.default_rng(seed + 1)
    names = sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, _, fs in os.walk(root)
        for f in fs
        if f.endswith(".safetensors")
    )
    count = nbytes = 0
    parts = Parts()
    for name in names:
        started, before = time.monotonic(), nbytes
        with safe_open(os.path.join(root, name), framework="numpy") as f:
            keys = list(f.keys())
            for i in order.permutation(len(keys)):
                nbytes += f.get_tensor(keys[i]).nbytes
                count += 1
        parts.add(name, started, nbytes - before)
    print(f"loaded {len(names)} files, {count} tensors, {nbytes} bytes")
    print(f"parts {parts}")


def main():
    mode, root, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    scale = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    adapters = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    if mode == "load":
        load(root, seed)
        return
    if mode == "seq":
        sequential(root)
        return
    files = repository(seed, scale, adapters)
    if mode == "write":
        for name, ts in files.items():
            path = os.path.join(root, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_file(ts, path)
        return
    order = np.random.default_rng(seed + 1)
    count = nbytes = 0
    for name, expected in files.items():
        with safe_open(os.path.join(root, name), framework="numpy") as f:
            keys = list(f.keys())
            if sorted(keys) != sorted(expected):
                sys.exit(f"{name}: tensors {sorted(keys)} != {sorted(expected)}")
            for i in order.permutation(len(keys)):
                key = keys[i]
                got = f.get_tensor(key)
                want = expected[key]
                if got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want):
                    sys.exit(f"{name}: tensor {key} differs")
                count += 1
                nbytes += got.nbytes
    print(f"checked {len(files)} files, {count} tensors, {nbytes} bytes")


if __name__ == "__main__":
    main()
