#!/usr/bin/env python3
"""Deterministic (seeded) file store for benchmarks, in the aa/bb/<uuid> layout.

usage: gen_store.py ROOT SIZE_MB [SEED]

About 20,000 small files (1-64 KiB) per GiB and a few large ones (1-20 MiB) holding about
40 % of the bytes; two thirds of the files are compressible (text-like: random bytes mapped
onto a skewed alphabet, so nothing repeats and zstd's long window gains nothing), one third
random. Prints one UUID per line for the system$filedocument rows.
"""
import os
import random
import sys
import uuid

root, size_mb = sys.argv[1], int(sys.argv[2])
rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 42)
alphabet = b"eeeeeeeetttttaaaaooooiiinnnsssshhhrrrddllcumwfgypbvk  \n"
table = bytes(alphabet[i % len(alphabet)] for i in range(256))
target = size_mb * 1024 * 1024
large_budget = target * 2 // 5
written = 0
uuids = []


def content(n, compressible):
    data = rng.randbytes(n)
    return data.translate(table) if compressible else data


def emit(n):
    global written
    u = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    d = os.path.join(root, u[0:2], u[2:4])
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, u), "wb") as f:
        f.write(content(n, rng.random() < 2 / 3))
    written += n
    uuids.append(u)


large = 0
while large < large_budget:
    n = rng.randint(1, 20) * 1024 * 1024
    emit(n)
    large += n
while written < target:
    emit(rng.randint(1, 64) * 1024)
sys.stdout.write("\n".join(uuids) + "\n")
sys.stderr.write(f"gen_store: {len(uuids)} files, {written / 1048576:.0f} MiB in {root}\n")
