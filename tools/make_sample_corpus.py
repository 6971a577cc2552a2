#!/usr/bin/env python3
"""Write the embedded sample corpus (Pile-format JSONL from the Python standard library).

Example:
    python tools/make_sample_corpus.py --output data/stdlib_sample.jsonl
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from based_megatron.data.sample_corpus import main  # noqa: E402

if __name__ == "__main__":
    main()
