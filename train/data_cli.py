"""`plait-data prepare OUTPUT_DIR --tokenizer TOKENIZER [PATH ...]`: tokenise a corpus once into a prepared
directory (flat token files, a document index, a manifest) that `plait-train` reads with
`data.source=prepared data.mixture=[{path: OUTPUT_DIR, weight: 1}]`.

Sources: files (text, JSON(L), parquet; globs), a `save_to_disk` folder (`--source disk`), a hub dataset
(`--source hub --name ...`, streamed) or the embedded corpus (`--source default`). An interrupted
preparation continues where it stopped when run again with the same arguments.
"""

from __future__ import annotations

import argparse
import os
import sys

from .prepare import prepare
from .recipe import DataRecipe, RecipeError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="plait-data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="tokenise a corpus into a prepared directory")
    p.add_argument("output_dir", help="the prepared directory to write (or to continue)")
    p.add_argument("paths", nargs="*", help="data files or globs (--source files), or a save_to_disk folder")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory or hub name (a fast tokenizer)")
    p.add_argument("--source", choices=["files", "disk", "hub", "default"], default="files")
    p.add_argument("--name", help="hub dataset name (--source hub)")
    p.add_argument("--subset", help="hub dataset configuration")
    p.add_argument("--split", default="train")
    p.add_argument("--text-field", default="text", help="the column / JSON key holding the text")
    p.add_argument("--max-documents", type=int, help="keep only the first N documents")
    p.add_argument("--num-proc", type=int, default=os.cpu_count(), help="tokenising worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args, rest = parser.parse_known_args(argv)
    unknown = [arg for arg in rest if arg.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.paths += rest  # paths may also follow the options
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    try:
        if args.num_proc < 1:
            raise RecipeError(f"--num-proc={args.num_proc} is not valid; expected an integer >= 1")
        if args.source in ("files", "disk") and not args.paths:
            raise RecipeError(f"--source {args.source} needs PATH arguments (the data files or the folder)")
        if args.source == "hub" and not args.name:
            raise RecipeError("--source hub needs --name (a datasets hub name)")
        data = DataRecipe(
            source=args.source,
            paths=args.paths,
            name=args.name,
            subset=args.subset,
            split=args.split,
            text_field=args.text_field,
            max_documents=args.max_documents,
            streaming=args.source == "hub",
        )
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        except OSError as e:
            raise RecipeError(f"--tokenizer={args.tokenizer!r} could not be loaded: {e}") from None
        out = prepare(data, tokenizer, args.output_dir, num_proc=args.num_proc, progress=not args.no_progress)
    except RecipeError as e:
        sys.exit(f"plait-data: error: {e}")
    print(f"plait-data: prepared {out}")


if __name__ == "__main__":
    main()
