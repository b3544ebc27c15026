"""`plait-train RECIPE [--set section.key=value ...]` (also `python -m plait.train`).

RECIPE is a YAML file or the name of a shipped recipe (`tiny`, `small`, `1b`). Start it under
`accelerate launch --config_file launch/accelerate/<engine>.yaml` for DDP, FSDP or DeepSpeed (see
launch/README.md); alone it trains in one process.
"""

from __future__ import annotations

import argparse
import errno
import sys

import yaml

from .errors import RunError
from .lifecycle import one_warning_each
from .preemption import REQUEUE_EXIT_CODE, Preempted
from .recipe import RecipeError, load_recipe, model_config
from .run_dir import AlreadyFinished

# Failures of the machine rather than of Plait, reported in one line: a full disk, a quota, a read-only or
# forbidden path.
USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="plait-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="recipe YAML path or shipped recipe name (tiny, small, 1b)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a recipe value (parsed as YAML); repeatable",
    )
    parser.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="print the validated recipe and model config and exit without training",
    )
    # The `deepspeed` launcher passes --local_rank; the rank is read from the environment instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    one_warning_each()
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        if args.print_only:
            print(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
            if recipe.model.pretrained is None:
                print("# model config (validated; vocab_size comes from the tokenizer when unset):")
                print(model_config(recipe).to_json_string(use_diff=False))
            return 0
        from .trainer import run

        result = run(recipe)
    except AlreadyFinished as e:
        print(f"plait-train: {e}; nothing to do")
        return 0
    except Preempted as e:
        print(f"plait-train: {e}", file=sys.stderr)
        return REQUEUE_EXIT_CODE
    except (RecipeError, RunError) as e:
        print(f"plait-train: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in USER_OS_ERRORS:
            raise
        # the checkpoint being written is in .staging/ and never replaces the last complete one
        print(f"plait-train: error: {e.strerror} writing {e.filename or 'the output'}", file=sys.stderr)
        return 1
    if result.final_dir is not None and result.trainer.args.should_save:
        print(f"plait-train: final model saved to {result.final_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
