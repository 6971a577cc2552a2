"""Train a tokenizer from JSONL for users without one (the engine of ``tools/train_tokenizer.py``).

- ``bpe``: a GPT-2-style byte-level BPE (``tokenizers``) with ``<|endoftext|>``; writes
  ``vocab.json`` + ``merges.txt`` (use as ``--tokenizer-type gpt2bpe``) and ``tokenizer.json``
  (``--tokenizer-type huggingface``).
- ``sentencepiece``: a lossless SentencePiece model (unigram or BPE, identity normalisation, no
  dummy prefix, byte fallback, ``</s>`` as EOD); writes
  ``tokenizer.model`` (``--tokenizer-type sentencepiece``).
"""

import argparse
import json
import os
import sys
from typing import Iterator, List, Optional, Sequence

from based_megatron.data.jsonl import BadInput, iter_line_chunks, parse_line
from based_megatron.data.tokenizers import EOD_TOKEN

SENTENCEPIECE_MAX_LINE_BYTES = 4096


def iter_texts(paths: Sequence[str], key: str, max_documents: Optional[int] = None) -> Iterator[str]:
    """The ``key`` texts of JSONL files in order; a bad line raises BadInput naming file and line."""
    count = 0
    for path in paths:
        for first_line, lines in iter_line_chunks(path, 256, 1 << 22):
            for offset, raw in enumerate(lines):
                if max_documents is not None and count >= max_documents:
                    return
                yield parse_line(raw, [key], path, first_line + offset)[key]
                count += 1


def train_bpe(texts: Iterator[str], vocab_size: int, output_dir: str) -> List[str]:
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer(add_prefix_space=False)
    tokenizer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=[EOD_TOKEN], show_progress=False)
    os.makedirs(output_dir, exist_ok=True)
    files = tokenizer.save_model(output_dir)  # vocab.json, merges.txt
    tokenizer_json = os.path.join(output_dir, "tokenizer.json")
    tokenizer.save(tokenizer_json)
    return sorted(files) + [tokenizer_json]


def _sentencepiece_lines(texts: Iterator[str]) -> Iterator[str]:
    # SentencePiece trains on sentences: feed non-empty lines, cut to its line-length limit
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                yield line.encode("utf-8")[:SENTENCEPIECE_MAX_LINE_BYTES].decode("utf-8", "ignore")


def train_sentencepiece(texts: Iterator[str], vocab_size: int, output_dir: str,
                        model_type: str = "unigram") -> List[str]:
    import sentencepiece

    os.makedirs(output_dir, exist_ok=True)
    prefix = os.path.join(output_dir, "tokenizer")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=_sentencepiece_lines(texts), model_prefix=prefix, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, byte_fallback=True,
        # lossless: decode(encode(text)) == text (no normalisation, no dummy prefix)
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, max_sentence_length=SENTENCEPIECE_MAX_LINE_BYTES,
        num_threads=1, minloglevel=2)
    return [prefix + ".model", prefix + ".vocab"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="JSONL files (plain, .gz, .zst)")
    parser.add_argument("--json-key", default="text")
    parser.add_argument("--type", required=True, choices=("bpe", "sentencepiece"))
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--sentencepiece-model-type", default="unigram", choices=("unigram", "bpe"))
    parser.add_argument("--max-documents", type=int, help="train on the first N documents only")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    texts = iter_texts(args.input, args.json_key, args.max_documents)
    try:
        if args.type == "bpe":
            files = train_bpe(texts, args.vocab_size, args.output_dir)
        else:
            files = train_sentencepiece(texts, args.vocab_size, args.output_dir,
                                        args.sentencepiece_model_type)
    except BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"type": args.type, "files": files}, indent=2))
    return 0
