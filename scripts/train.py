"""Train with SMART from a recipe -- the same as `smart-hf train`, for use without installing the console script.

python scripts/train.py --config recipes/deit_digits_block.yaml [--key value ...]
python scripts/train.py --config deit_digits_block --max_steps 200   # a shipped recipe by name; stages scale
accelerate launch scripts/train.py --config recipes/minilm_tweets_2of4.yaml
"""

import sys

from smart_hf.cli.commands import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
