#!/usr/bin/env python3
"""Metadata operations per second on a mounted file system, in the style of
mdtest: create, stat, readdir, rename and unlink of empty files, each
thread in a directory of its own. Prints one JSON object.

    bench/mdtest.py DIR [--threads 4] [--files 2000] [--drop-caches]

--files is the total over all threads. With --drop-caches (root), the
kernel's dentry and inode caches are dropped before each phase, so every
stat and lookup reaches the file system rather than the kernel's cache.
Python's per-call cost (a few microseconds) is small next to a FUSE round
trip, and the calls release the GIL, so threads run in parallel.
"""

import argparse
import json
import os
import threading
import time


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def run_phase(threads, work):
    """Run work(t) on each thread index at once; seconds for all to finish."""
    barrier = threading.Barrier(len(threads) + 1)
    errors = []

    def body(t):
        barrier.wait()
        try:
            work(t)
        except Exception as e:  # reported after the phase
            errors.append(e)

    ts = [threading.Thread(target=body, args=(t,)) for t in threads]
    for t in ts:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--drop-caches", action="store_true")
    a = ap.parse_args()

    root = os.path.join(a.dir, f"mdtest-{os.getpid()}-{a.threads}")
    os.mkdir(root)
    per = a.files // a.threads
    dirs = [os.path.join(root, f"t{t}") for t in range(a.threads)]
    for d in dirs:
        os.mkdir(d)
    idx = list(range(a.threads))
    names = [f"f{i:07d}" for i in range(per)]
    result = {"threads": a.threads, "files": per * a.threads}

    def phase(name, work, ops):
        if a.drop_caches:
            drop_caches()
        secs = run_phase(idx, work)
        result[name] = round(ops / secs, 1)

    def create(t):
        for n in names:
            os.close(os.open(os.path.join(dirs[t], n), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))

    def stat(t):
        for n in names:
            os.stat(os.path.join(dirs[t], n))

    def readdir(t):
        # Entries listed per second, a whole directory at a time.
        got = len(os.listdir(dirs[t]))
        assert got == per, f"{dirs[t]}: {got} entries, expected {per}"

    def rename(t):
        for n in names:
            os.rename(os.path.join(dirs[t], n), os.path.join(dirs[t], "r" + n))

    def unlink(t):
        for n in names:
            os.unlink(os.path.join(dirs[t], "r" + n))

    total = per * a.threads
    phase("create", create, total)
    phase("stat", stat, total)
    phase("readdir", readdir, total)
    phase("rename", rename, total)
    phase("unlink", unlink, total)
    for d in dirs:
        os.rmdir(d)
    os.rmdir(root)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
