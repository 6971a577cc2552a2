"""An embedded sample corpus: Pile-format JSONL built from the installed Python standard library.

Every machine with Python has it and no network is needed. Three Pile-style subsets, in a fixed
order (sorted paths, sorted topics), so the bytes are identical on machines with the same Python:

- ``Python Docstrings``: one document per stdlib module, its module/class/function docstrings;
- ``Python Documentation``: the reference-manual topics shipped in ``pydoc_data.topics``;
- ``Github``: the source of the stdlib's top-level modules smaller than 32 KB.

About 4 MB with Python 3.11. ``ensure_sample_dataset`` turns it into a byte-tokenized Megatron
dataset (the embedded default training run and the tests use it).
"""

import argparse
import ast
import inspect
import json
import os
import sys
import sysconfig
from typing import Iterator, Tuple

SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
MAX_SOURCE_BYTES = 32_000
SAMPLE_CORPUS_NAME = "stdlib_sample.jsonl"
SAMPLE_PREFIX_NAME = "stdlib_sample"


def _stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def _module_files(root: str) -> Iterator[str]:
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(directory, name)


def _docstrings_document(path: str, root: str) -> str:
    """Module docstring, then each class/function docstring under its qualified name."""
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, ValueError, OSError):
        return ""
    module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
    parts = []
    module_doc = ast.get_docstring(tree)
    if module_doc:
        parts.append(f"{module}\n\n{module_doc}")

    def visit(node, qualname):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{qualname}.{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    parts.append(f"{name}\n\n{doc}")
                visit(child, name)

    visit(tree, module)
    return "\n\n".join(parts)


def iter_sample_documents() -> Iterator[Tuple[str, str]]:
    """(pile_set_name, text) pairs in a deterministic order."""
    root = _stdlib_root()
    for path in _module_files(root):
        text = _docstrings_document(path, root)
        if text.strip():
            yield "Python Docstrings", text

    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = inspect.cleandoc(topics[name])
        if text.strip():
            yield "Python Documentation", text

    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.endswith(".py") and os.path.getsize(path) < MAX_SOURCE_BYTES:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if text.strip():
                yield "Github", text


def write_sample_corpus(output: str) -> int:
    """Write the corpus as JSONL (under a temporary name, renamed when complete); returns #docs."""
    count = 0
    tmp = f"{output}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for set_name, text in iter_sample_documents():
                f.write(json.dumps({"text": text, "meta": {"pile_set_name": set_name}}) + "\n")
                count += 1
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return count


def ensure_sample_dataset(out_dir: str, workers: int = 1) -> str:
    """Build the sample corpus and its byte-tokenizer dataset in ``out_dir`` unless present.

    Returns the dataset prefix (``<out_dir>/stdlib_sample_text_document``), with its tokenizer
    recorded next to it.
    """
    from based_megatron.data.indexed import dataset_exists
    from based_megatron.data.preprocess import preprocess_main

    os.makedirs(out_dir, exist_ok=True)
    output_prefix = os.path.join(out_dir, SAMPLE_PREFIX_NAME)
    dataset_prefix = f"{output_prefix}_text_document"
    if dataset_exists(dataset_prefix):
        return dataset_prefix
    corpus = os.path.join(out_dir, SAMPLE_CORPUS_NAME)
    if not os.path.exists(corpus):
        write_sample_corpus(corpus)
    preprocess_main(["--input", corpus, "--output-prefix", output_prefix, "--tokenizer-type", "byte",
                     "--append-eod", "--workers", str(workers), "--quiet"])
    return dataset_prefix


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="the JSONL file to write")
    args = parser.parse_args(argv)
    count = write_sample_corpus(args.output)
    size = os.path.getsize(args.output)
    print(f"wrote {count} documents, {size / 1e6:.2f} MB to {args.output} "
          f"(Python {sys.version.split()[0]} standard library)")
