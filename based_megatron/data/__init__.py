"""Data: tokenizers, Megatron indexed datasets, preprocessing, the sample corpus, GPTDataset wiring.

Modules (import what you need; ``gpt_datasets`` and ``indexed`` import megatron-core):
    tokenizers         build_tokenizer, load_tokenizer_for_dataset, Tokenizer (byte/HF/GPT-2/SP)
    indexed            open_indexed_dataset, check_indexed_dataset, merge_datasets
    preprocess         the engine of tools/preprocess_data.py
    gpt_datasets       build_gpt_datasets, PretrainingSampler, build_pretraining_data_loader
    sample_corpus      write_sample_corpus, ensure_sample_dataset
    tokenizer_training train_bpe, train_sentencepiece
"""
