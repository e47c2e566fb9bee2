"""Writes the starting corpus of each fuzz target into fuzz/seeds/<target>/.

Run from the repository root after `cargo build --release` (the model seeds are saved by the
`linear-softmax` binary): `python3 fuzz/seeds/make_seeds.py`. The input formats are those of
fuzz/src/lib.rs.
"""

import gzip
import os
import struct
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(data)


def two_parts(first, second):
    """The layout of the idx and model_dir targets: u16 length of the first part, both parts."""
    return struct.pack("<H", len(first)) + first + second


def idx(magic, dims, body):
    return bytes([0, 0, 8, magic]) + b"".join(struct.pack(">I", d) for d in dims) + bytes(body)


write("csv", "header", b"a,b,label\n1,2,0\n3,4,1\n")
write("csv", "plain", b"1,2,0\n3,4,1\n1.5,-2e3,1\n\n0.25,7,0\n")
write("csv", "crlf", b"x,y\r\n0.5,1\r\n0.1,0\r\n")

images = idx(3, [2, 2, 2], range(0, 256, 32))
labels = idx(1, [2], [0, 1])
write("idx", "plain", two_parts(images, labels))
write("idx", "gzipped", two_parts(gzip.compress(images), gzip.compress(labels)))

# targets: constructor byte, n_classes (u64), rows (u64), ignore_index (i64), then values.
header = lambda constructor, classes, rows, ignore: (
    bytes([constructor]) + struct.pack("<QQq", classes, rows, ignore)
)
write("targets", "indices", header(0, 3, 0, 0) + bytes([0, 1, 2, 1]))
write("targets", "ignored", header(1, 3, 0, -100) + bytes([0, 0x9C, 2]))
write("targets", "probabilities", header(2, 2, 2, 0) + struct.pack("<4f", 0.5, 0.5, 1.0, 0.0))
write("targets", "multi_hot", header(3, 2, 2, 0) + bytes([1, 0, 1, 1]))
write("targets", "tensor", header(4, 3, 0, 0) + bytes([2, 1, 0]))
write("targets", "sequence", header(5, 3, 2, -100) + bytes([0, 1, 0x9C, 2]))
write("targets", "probability_tensor", header(6, 2, 0, 0) + struct.pack("<4f", 0.25, 0.75, 1.0, 0.0))

with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, "data.csv")
    with open(data, "w") as f:
        f.write("".join(f"{i % 3},{(i * 7) % 5},{i % 2}\n" for i in range(20)))
    for name, extra in [("linear", []), ("mlp", ["--hidden", "3"])]:
        out = os.path.join(tmp, name)
        subprocess.run(
            ["target/release/linear-softmax", "train", "--data", data, "--epochs", "1",
             "--report-rows", "0", "--out", out, *extra],
            check=True, stdout=subprocess.DEVNULL,
        )
        config = open(os.path.join(out, "config.json"), "rb").read()
        weights = open(os.path.join(out, "model.bpk"), "rb").read()
        write("model_dir", name, two_parts(config, weights))
