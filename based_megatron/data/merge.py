"""Join indexed-dataset shards into one prefix (the engine of ``tools/merge_datasets.py``)."""

import argparse
import glob
import os
import sys
from typing import List

from based_megatron.data.indexed import IndexedDatasetError, merge_datasets
from based_megatron.data.tokenizers import TokenizerError


def expand_inputs(inputs: List[str]) -> List[str]:
    """Each input is a dataset prefix, or a directory standing for all its prefixes (sorted)."""
    prefixes = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(path[:-len(".idx")] for path in glob.glob(os.path.join(item, "*.idx")))
            if not found:
                raise IndexedDatasetError(f"--input {item}: directory holds no .idx files")
            prefixes += found
        else:
            prefixes.append(item[:-4] if item.endswith((".bin", ".idx")) else item)
    return prefixes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", nargs="+", required=True,
                        help="dataset prefixes (or directories of them), joined in this order")
    parser.add_argument("--output-prefix", required=True,
                        help="the merged dataset prefix (writes <prefix>.bin/.idx)")
    args = parser.parse_args(argv)
    try:
        prefixes = expand_inputs(args.input)
        if os.path.abspath(args.output_prefix) in map(os.path.abspath, prefixes):
            raise IndexedDatasetError(f"--output-prefix {args.output_prefix} is also an input")
        merge_datasets(prefixes, args.output_prefix)
    except (IndexedDatasetError, TokenizerError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"merged {len(prefixes)} datasets into {args.output_prefix}.bin/.idx")
    return 0
