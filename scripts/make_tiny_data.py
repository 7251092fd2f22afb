"""Write the tiny world: every dataset the tiny chain needs, generated deterministically from a seed.

    python scripts/make_tiny_data.py --output_dir runs/tiny/data --seed 0
    python scripts/make_tiny_data.py --config recipes/tiny/data.yaml

The same seed gives byte-identical files. `manifest.json` lists every file with its hash and every defect planted
in the raw web corpus, so that data preparation can be scored against it.
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
import time
from dataclasses import dataclass, field

from llm_recipes import stage
from llm_recipes.recipe import RecipeParser
from llm_recipes.tiny_world import TinyWorldConfig, generate_tiny_world


@dataclass
class TinyDataArguments(TinyWorldConfig):
    output_dir: str = field(default="runs/tiny/data", metadata={"help": "Folder the tiny world is written to."})


ARGUMENTS = (TinyDataArguments,)


def main(argv=None):
    (args,) = RecipeParser(ARGUMENTS).parse(argv)
    stage.setup_logging()
    config = TinyWorldConfig(**{k: v for k, v in vars(args).items() if k != "output_dir"})
    started = time.time()
    manifest = generate_tiny_world(args.output_dir, config)
    rows = {path: entry["rows"] for path, entry in manifest["files"].items()}
    for path, count in sorted(rows.items()):
        stage.logger.info("%-28s %7d rows", path, count)
    stage.mark_complete(args.output_dir, {"stage": "data", "seed": args.seed, "rows": rows,
                                          "seconds": time.time() - started})


if __name__ == "__main__":
    stage.run(main)
