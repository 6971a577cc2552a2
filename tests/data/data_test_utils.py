"""Helpers shared by the data tests (a uniquely named module, importable from the tests)."""

import json
import os

# documents that stress byte handling: multi-byte UTF-8, emoji, CRLF, NUL, a literal EOD string
TRICKY_TEXTS = [
    "héllo wörld, 日本語のテキスト, emoji 🤖🎉 and a tab\there",
    "Windows line endings\r\nsecond line\r\n",
    "  leading and trailing spaces  \n\n",
    "a literal <|endoftext|> and </s> inside a document",
    "control characters: \x00 \x07 \u2028 end",
]


def write_jsonl(path, texts, set_name="Test"):
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text, "meta": {"pile_set_name": set_name}}) + "\n")
    return str(path)


def tokenizer_flags(kwargs):
    flags = ["--tokenizer-type", kwargs["tokenizer_type"]]
    for key, flag in (("tokenizer_model", "--tokenizer-model"), ("vocab_file", "--vocab-file"),
                      ("merge_file", "--merge-file")):
        if key in kwargs:
            flags += [flag, kwargs[key]]
    return flags


def preprocess(inputs, output_prefix, *extra, tokenizer=("--tokenizer-type", "byte")):
    """Run preprocessing in this process; returns the stats."""
    from based_megatron.data.preprocess import preprocess_main

    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    return preprocess_main(["--input", *inputs, "--output-prefix", str(output_prefix),
                            *tokenizer, "--append-eod", "--quiet", *extra])


REPO_ROOT_ENV = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
