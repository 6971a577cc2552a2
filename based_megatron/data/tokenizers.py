"""Tokenizers behind one interface.

Four kinds, all exposing ``vocab_size``, ``eod``, ``encode``, ``encode_batch``, ``decode`` and
``save_pretrained`` (a directory that ``transformers.AutoTokenizer.from_pretrained`` loads):

- ``byte``: UTF-8 bytes, no files. Ids 0..255 are the bytes, id 256 (``BYTE_EOD_ID``) is the
  end-of-document token ``<|endoftext|>``; vocab_size 257.
- ``huggingface``: a ``tokenizer.json`` file or a local directory that transformers loads.
- ``gpt2bpe``: GPT-2 BPE ``vocab.json`` + ``merges.txt`` (the paper's tokenizer); EOD ``<|endoftext|>``.
- ``sentencepiece``: a SentencePiece ``.model``; EOD is the model's ``</s>`` (eos) id.

Documents are encoded as plain text: no BOS/EOS is added and a literal ``<|endoftext|>`` inside a
document is encoded as text, never as the control token (preprocessing appends EOD itself).

The tokenizer used for a dataset is recorded next to it (``record_tokenizer``) so training and the
HF export reuse it (``load_tokenizer_for_dataset``).
"""

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from itertools import chain
from typing import List, Optional, Sequence, Tuple

import numpy

TOKENIZER_TYPES = ("byte", "huggingface", "gpt2bpe", "sentencepiece")
BYTE_EOD_ID = 256
EOD_TOKEN = "<|endoftext|>"
MANIFEST_NAME = "based_megatron_tokenizer.json"
MANIFEST_FORMAT = "based_megatron.tokenizer/1"


class TokenizerError(ValueError):
    """A tokenizer could not be built or loaded; the message names the file or flag."""


class Tokenizer:
    """The interface every tokenizer kind implements (also what megatron-core's GPTDataset reads:
    ``vocab_size``, ``eod`` and ``unique_identifiers``)."""

    kind: str
    vocab_size: int
    eod: int

    def encode(self, text: str) -> List[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [self.encode(text) for text in texts]

    def encode_concatenated(self, texts: Sequence[str], dtype) -> Tuple[numpy.ndarray, numpy.ndarray]:
        """(all token ids of ``texts`` back to back as ``dtype``, int64 length of each text)."""
        ids = self.encode_batch(texts)
        lengths = numpy.fromiter(map(len, ids), dtype=numpy.int64, count=len(ids))
        tokens = numpy.fromiter(chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
        return tokens, lengths

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def save_pretrained(self, directory: str) -> None:
        """Write files that ``transformers.AutoTokenizer.from_pretrained(directory)`` loads."""
        raise NotImplementedError

    def _native_bytes(self) -> bytes:
        """A canonical serialisation; equal bytes mean identical tokenization."""
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self._native_bytes())
        digest.update(f"eod={self.eod}".encode())
        return digest.hexdigest()[:16]

    @property
    def unique_identifiers(self) -> OrderedDict:
        # megatron-core hashes this into its dataset cache names
        return OrderedDict(kind=self.kind, vocab_size=self.vocab_size, eod=self.eod,
                           fingerprint=self.fingerprint)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eod={self.eod})"


def _byte_level_hf_tokenizer():
    """A `tokenizers` model equivalent to ByteTokenizer: byte b -> id b, EOD -> 256."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizerModel

    byte_to_char = _gpt2_bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    model = HFTokenizerModel(models.BPE(vocab=vocab, merges=[]))
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    model.decoder = decoders.ByteLevel()
    model.add_special_tokens([AddedToken(EOD_TOKEN, special=True)])
    return model


def _gpt2_bytes_to_unicode() -> dict:
    """GPT-2's reversible byte -> printable character table (used by ByteLevel pre-tokenizers)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes; needs no files. Id 256 is EOD."""

    kind = "byte"
    vocab_size = 257
    eod = BYTE_EOD_ID

    def encode(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

    def encode_concatenated(self, texts: Sequence[str], dtype) -> Tuple[numpy.ndarray, numpy.ndarray]:
        encoded = [text.encode("utf-8") for text in texts]
        lengths = numpy.fromiter(map(len, encoded), dtype=numpy.int64, count=len(encoded))
        return numpy.frombuffer(b"".join(encoded), dtype=numpy.uint8).astype(dtype), lengths

    def decode(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        out, start = [], 0
        for i, token in enumerate(ids + [BYTE_EOD_ID]):
            if token == BYTE_EOD_ID:
                out.append(bytes(ids[start:i]).decode("utf-8", errors="replace"))
                start = i + 1
        return EOD_TOKEN.join(out)

    def save_pretrained(self, directory: str) -> None:
        _save_hf_fast(_byte_level_hf_tokenizer(), EOD_TOKEN, directory)

    def _native_bytes(self) -> bytes:
        return b"byte-utf8-v1"


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` model (tokenizer.json, a local directory, or GPT-2 BPE files)."""

    def __init__(self, model, eod_token: str, kind: str = "huggingface", source: str = ""):
        eod = model.token_to_id(eod_token)
        if eod is None:
            raise TokenizerError(f"tokenizer {source}: end-of-document token {eod_token!r} is not in "
                                 "its vocabulary; pass --eod-token with a token it has")
        self.model = model
        self.model.encode_special_tokens = True  # document text never yields control tokens
        self.kind = kind
        self.eod_token = eod_token
        self.eod = eod
        self.vocab_size = model.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> List[int]:
        return self.model.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [e.ids for e in self.model.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.model.decode(list(map(int, ids)), skip_special_tokens=False)

    def save_pretrained(self, directory: str) -> None:
        _save_hf_fast(self.model, self.eod_token, directory)

    def _native_bytes(self) -> bytes:
        return self.model.to_str().encode("utf-8")


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; EOD is its eos (``</s>``) id."""

    kind = "sentencepiece"

    def __init__(self, model_file: str):
        import sentencepiece

        _require_file(model_file, "--tokenizer-model")
        self.model_file = model_file
        self.model = sentencepiece.SentencePieceProcessor(model_file=model_file)
        self.eod = self.model.eos_id()
        if self.eod < 0:
            raise TokenizerError(f"SentencePiece model {model_file} has no eos (</s>) piece to use "
                                 "as end-of-document; train it with eos_id >= 0")
        self.vocab_size = self.model.get_piece_size()

    def encode(self, text: str) -> List[int]:
        return self.model.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return self.model.encode(list(texts), num_threads=1)

    def decode(self, ids: Sequence[int]) -> str:
        return self.model.decode(list(map(int, ids)))

    def save_pretrained(self, directory: str) -> None:
        from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

        proto = import_protobuf().ModelProto.FromString(self.model.serialized_model_proto())
        if proto.trainer_spec.model_type == 1:  # unigram: (piece, score) list
            vocab = [(p.piece, p.score) for p in proto.pieces]
        else:  # BPE: piece -> id; merges derived from the scores
            vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        model = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
        _save_hf_fast(model, self.model.id_to_piece(self.eod), directory)
        shutil.copyfile(self.model_file, os.path.join(directory, "tokenizer.model"))

    def _native_bytes(self) -> bytes:
        return self.model.serialized_model_proto()


def _save_hf_fast(model, eod_token: str, directory: str) -> None:
    from transformers import PreTrainedTokenizerFast

    os.makedirs(directory, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=model, eos_token=eod_token, bos_token=eod_token)
    fast.save_pretrained(directory)


def _require_file(path: Optional[str], flag: str) -> None:
    if not path:
        raise TokenizerError(f"{flag} is required for this tokenizer type")
    if not os.path.isfile(path):
        raise TokenizerError(f"{flag} {path}: no such file")
    if not os.access(path, os.R_OK):
        raise TokenizerError(f"{flag} {path}: file is not readable")


def _find_eod_token(model, source: str, eos_token: Optional[str]) -> str:
    for candidate in (eos_token, EOD_TOKEN, "</s>", "<eos>", "<|end_of_text|>"):
        if candidate and model.token_to_id(candidate) is not None:
            return candidate
    raise TokenizerError(f"tokenizer {source}: cannot tell its end-of-document token (no eos_token, "
                         f"{EOD_TOKEN!r} or '</s>'); pass --eod-token")


def _load_hf(path: str, eod_token: Optional[str]) -> HFTokenizer:
    from tokenizers import Tokenizer as HFTokenizerModel

    if os.path.isdir(path):
        json_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(json_file):
            return _load_hf_directory_via_transformers(path, eod_token)
        config_file = os.path.join(path, "tokenizer_config.json")
        eos = json.load(open(config_file)).get("eos_token") if os.path.isfile(config_file) else None
        eos = eos.get("content") if isinstance(eos, dict) else eos
    else:
        _require_file(path, "--tokenizer-model")
        json_file, eos = path, None
    try:
        model = HFTokenizerModel.from_file(json_file)
    except Exception as error:
        raise TokenizerError(f"--tokenizer-model {json_file}: not a tokenizers JSON file ({error})")
    return HFTokenizer(model, eod_token or _find_eod_token(model, json_file, eos), source=json_file)


def _load_hf_directory_via_transformers(path: str, eod_token: Optional[str]) -> HFTokenizer:
    from transformers import AutoTokenizer

    try:
        fast = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = fast.backend_tokenizer
    except Exception as error:
        raise TokenizerError(f"--tokenizer-model {path}: transformers cannot load a fast tokenizer "
                             f"from this directory ({error})")
    return HFTokenizer(model, eod_token or _find_eod_token(model, path, fast.eos_token), source=path)


def _load_gpt2bpe(vocab_file: Optional[str], merge_file: Optional[str],
                  eod_token: Optional[str]) -> HFTokenizer:
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizerModel

    _require_file(vocab_file, "--vocab-file")
    _require_file(merge_file, "--merge-file")
    try:
        bpe = models.BPE.from_file(vocab_file, merge_file, fuse_unk=False)
    except Exception as error:
        raise TokenizerError(f"--vocab-file {vocab_file} / --merge-file {merge_file}: not GPT-2 BPE "
                             f"files ({error})")
    # the same pipeline transformers' GPT2Converter builds for GPT2TokenizerFast
    model = HFTokenizerModel(bpe)
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    model.post_processor = processors.ByteLevel(trim_offsets=False)
    eod_token = eod_token or EOD_TOKEN
    model.add_special_tokens([AddedToken(eod_token, special=True)])
    return HFTokenizer(model, eod_token, kind="gpt2bpe", source=vocab_file)


def build_tokenizer(tokenizer_type: str, tokenizer_model: Optional[str] = None,
                    vocab_file: Optional[str] = None, merge_file: Optional[str] = None,
                    eod_token: Optional[str] = None) -> Tokenizer:
    """Build a tokenizer of one of TOKENIZER_TYPES.

    byte: no files. huggingface: tokenizer_model = tokenizer.json or a local directory.
    gpt2bpe: vocab_file + merge_file. sentencepiece: tokenizer_model = a .model file.
    """
    if tokenizer_type == "byte":
        return ByteTokenizer()
    if tokenizer_type == "huggingface":
        if not tokenizer_model:
            raise TokenizerError("--tokenizer-model (tokenizer.json or a local directory) is "
                                 "required for --tokenizer-type huggingface")
        if not os.path.exists(tokenizer_model):
            raise TokenizerError(f"--tokenizer-model {tokenizer_model}: no such file or directory")
        return _load_hf(tokenizer_model, eod_token)
    if tokenizer_type == "gpt2bpe":
        return _load_gpt2bpe(vocab_file, merge_file, eod_token)
    if tokenizer_type == "sentencepiece":
        return SentencePieceTokenizer(tokenizer_model)
    raise TokenizerError(f"unknown tokenizer type {tokenizer_type!r}; expected one of "
                         f"{', '.join(TOKENIZER_TYPES)}")


# ---------------------------------------------------------------- recorded next to a dataset


def tokenizer_dir_for_dataset(prefix: str) -> str:
    """``P_text_document`` -> ``P_text_document.tokenizer`` (a directory HF can load too)."""
    return prefix + ".tokenizer"


def save_tokenizer(tokenizer: Tokenizer, directory: str) -> None:
    """save_pretrained + a manifest that ``load_tokenizer`` reads back into the same kind."""
    tokenizer.save_pretrained(directory)
    manifest = {"format": MANIFEST_FORMAT, "kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                "eod": tokenizer.eod, "fingerprint": tokenizer.fingerprint}
    if isinstance(tokenizer, HFTokenizer):
        manifest["eod_token"] = tokenizer.eod_token
        with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(tokenizer.model.to_str())  # the exact model (save_pretrained may re-serialise)
    with open(os.path.join(directory, MANIFEST_NAME), "w") as f:
        json.dump(manifest, f, indent=2)


def load_tokenizer(directory: str) -> Tokenizer:
    manifest_file = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isfile(manifest_file):
        raise TokenizerError(f"{directory}: no {MANIFEST_NAME}; this is not a tokenizer recorded by "
                             "tools/preprocess_data.py")
    with open(manifest_file) as f:
        manifest = json.load(f)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise TokenizerError(f"{manifest_file}: format {manifest.get('format')!r}, expected "
                             f"{MANIFEST_FORMAT!r}")
    kind = manifest["kind"]
    if kind == "byte":
        tokenizer = ByteTokenizer()
    elif kind in ("huggingface", "gpt2bpe"):
        from tokenizers import Tokenizer as HFTokenizerModel

        model = HFTokenizerModel.from_file(os.path.join(directory, "tokenizer.json"))
        tokenizer = HFTokenizer(model, manifest["eod_token"], kind=kind, source=directory)
    elif kind == "sentencepiece":
        tokenizer = SentencePieceTokenizer(os.path.join(directory, "tokenizer.model"))
    else:
        raise TokenizerError(f"{manifest_file}: unknown tokenizer kind {kind!r}")
    if tokenizer.fingerprint != manifest["fingerprint"]:
        raise TokenizerError(f"{manifest_file}: the tokenizer files do not match the recorded "
                             f"fingerprint {manifest['fingerprint']} (got {tokenizer.fingerprint})")
    return tokenizer


def load_tokenizer_for_dataset(prefix: str) -> Tokenizer:
    """The tokenizer recorded next to the dataset ``prefix`` (``prefix.bin``/``prefix.idx``)."""
    directory = tokenizer_dir_for_dataset(prefix)
    if not os.path.isdir(directory):
        raise TokenizerError(f"dataset {prefix}: no recorded tokenizer at {directory}; pass the "
                             "tokenizer flags explicitly or re-run tools/preprocess_data.py")
    return load_tokenizer(directory)


def token_dtype(vocab_size: int):
    """megatron-core's ``DType.optimal_dtype``: uint16 below 65,500 ids, int32 otherwise (restated
    here so that preprocessing does not import megatron-core, hence torch)."""
    return numpy.uint16 if vocab_size < 65500 else numpy.int32
