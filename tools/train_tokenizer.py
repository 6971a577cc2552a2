#!/usr/bin/env python3
"""Train a byte-level BPE (GPT-2 style) or SentencePiece tokenizer from JSONL.

Example:
    python tools/train_tokenizer.py --input corpus.jsonl --type bpe --vocab-size 32000 \
        --output-dir my_tokenizer
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from based_megatron.data.tokenizer_training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
