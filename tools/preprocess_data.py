#!/usr/bin/env python3
"""Tokenize Pile-style JSONL into Megatron indexed datasets (.bin/.idx). See docs/data.md.

Example:
    python tools/preprocess_data.py --input pile_00.jsonl.zst --output-prefix data/pile \
        --tokenizer-type gpt2bpe --vocab-file gpt2-vocab.json --merge-file gpt2-merges.txt \
        --append-eod --workers 8
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from based_megatron.data.preprocess import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
