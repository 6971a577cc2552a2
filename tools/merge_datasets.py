#!/usr/bin/env python3
"""Join Megatron indexed-dataset shards into one prefix (checks dtype and tokenizer agree).

Example:
    python tools/merge_datasets.py --input data/shard_00_text_document data/shard_01_text_document \
        --output-prefix data/all_text_document
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from based_megatron.data.merge import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
