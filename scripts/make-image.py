#!/usr/bin/env python3
"""Write an OCI image layout with random, uncompressed single-file layers.

    python3 scripts/make-image.py --out DIR --tag TAG --layers 64MiB,16MiB,1KiB [--seed N]

Each layer is an uncompressed tar holding one file of random bytes of the given size
(media type application/vnd.oci.image.layer.v1.tar), so a layer's digest is its diff_id and
`skopeo copy --preserve-digests oci:DIR:TAG docker://...` pushes it byte for byte. The same
--seed and sizes always give the same digests. Standard library only.
"""

import argparse
import hashlib
import io
import json
import os
import random
import re
import sys
import tarfile
import tempfile

UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1 << 10,
    "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
    "g": 1000**3, "gb": 1000**3, "gib": 1 << 30,
}
CHUNK = 8 << 20


def parse_size(text):
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (examples: 4096, 64KiB, 16MiB, 1GiB)")
    return int(match.group(1)) * UNITS[match.group(2).lower()]


def parse_sizes(text):
    return [parse_size(part) for part in text.split(",") if part.strip()]


class RandomReader(io.RawIOBase):
    """A file-like object yielding `size` seeded pseudo-random bytes without holding them all."""

    def __init__(self, size, seed):
        self.left = size
        self.rng = random.Random(seed)

    def readable(self):
        return True

    def read(self, n=-1):
        if n is None or n < 0 or n > self.left:
            n = self.left
        n = min(n, CHUNK)
        self.left -= n
        return self.rng.randbytes(n)


class HashingWriter:
    """Writes to a file while computing its sha256 and size."""

    def __init__(self, file):
        self.file = file
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        return self.file.write(data)

    def digest(self):
        return "sha256:" + self.sha.hexdigest()


def write_blob_bytes(blobs, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest.split(":")[1]), "wb") as f:
        f.write(data)
    return digest, len(data)


def write_layer(blobs, index, size, seed):
    """Writes one layer tar into blobs/ and returns (digest, size)."""
    fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".layer-")
    with os.fdopen(fd, "wb") as raw:
        out = HashingWriter(raw)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(name=f"layer{index}.bin")
            info.size = size
            info.mode = 0o644
            info.mtime = 0
            info.uname = info.gname = "root"
            tar.addfile(info, RandomReader(size, seed * 1_000_003 + index))
    digest = out.digest()
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(blobs, digest.split(":")[1]))
    return digest, out.size


def canonical(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory of the OCI layout (created)")
    parser.add_argument("--tag", default="latest", help="reference name in index.json")
    parser.add_argument("--layers", type=parse_sizes, default=parse_sizes("16MiB,4MiB,1MiB"),
                        help="comma-separated layer file sizes, e.g. 64MiB,16MiB,1KiB")
    parser.add_argument("--seed", type=int, default=1, help="seed of the layer contents")
    args = parser.parse_args()

    blobs = os.path.join(args.out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    with open(os.path.join(args.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)

    layers = []
    for index, size in enumerate(args.layers):
        digest, tar_size = write_layer(blobs, index, size, args.seed)
        layers.append({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": tar_size,
        })
        print(f"layer {index}: {digest} {tar_size} bytes", file=sys.stderr)

    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"make-image.py layer {i}"}
                    for i in range(len(layers))],
    }
    config_digest, config_size = write_blob_bytes(blobs, canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layers,
    }
    manifest_digest, manifest_size = write_blob_bytes(blobs, canonical(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": args.tag},
        }],
    }
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f)
    print(manifest_digest)


if __name__ == "__main__":
    main()
