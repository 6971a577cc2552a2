"""Data for the loop: the data package's megatron-core GPTDatasets and its resumable pretraining sampler.

Order (Megatron's): iteration i reads the global batch of samples [c, c + global batch) where c = samples consumed
before it; micro-step m of data-parallel rank r reads c + m * (micro x DP) + r * micro + [0, micro). The global batch
is the same set for every data-parallel size, and a resumed run continues from the consumed-sample count.
"""

from based_megatron.training.errors import TrainingError


def build_datasets(args, tokenizer, train_samples, valid_samples):
    """(train, validation) megatron-core GPTDatasets holding at least the requested numbers of samples."""
    from based_megatron.data.gpt_datasets import build_gpt_datasets

    try:
        train, valid, _ = build_gpt_datasets(args.data_path, args.split, args.seq_length, args.seed,
                                             train_samples=train_samples,
                                             valid_samples=valid_samples if args.eval_iters else 0, test_samples=0,
                                             tokenizer=tokenizer, cache_dir=args.data_cache_path)
    except ValueError as error:
        raise TrainingError(f"--data-path/--split: {error}") from None
    if train is None:
        raise TrainingError(f"--split {args.split}: the train split is empty")
    if args.eval_iters and valid is None:
        raise TrainingError(f"--split {args.split}: the validation split is empty but --eval-iters is "
                            f"{args.eval_iters}; give it a share (e.g. --split 98,2,0) or set --eval-iters 0")
    return train, valid


class MicroBatches:
    """This rank's micro-batches (tokens, labels, loss_mask) of a split, from `consumed_samples` on."""

    def __init__(self, dataset, consumed_samples, args, dp_rank, split_name):
        from based_megatron.data.gpt_datasets import build_pretraining_data_loader

        self.split_name = split_name
        if consumed_samples >= len(dataset):
            self._exhausted(len(dataset))
        loader = build_pretraining_data_loader(dataset, consumed_samples, args.micro_batch_size, dp_rank,
                                               args.data_parallel_size)
        self.size = len(dataset)
        self.iterator = iter(loader)

    def take(self, count):
        """The next `count` micro-batches (one iteration's worth: --global-batch-size / (micro x DP))."""
        batches = []
        for _ in range(count):
            try:
                sample = next(self.iterator)
            except StopIteration:
                self._exhausted(self.size)
            batches.append((sample["tokens"].long(), sample["labels"].long(), sample["loss_mask"].float()))
        return batches

    def _exhausted(self, size):
        raise TrainingError(f"the {self.split_name} data is exhausted: the {self.split_name} split was built with "
                            f"{size} samples; lower --train-iters/--train-tokens (or --eval-iters) or add data to "
                            "--data-path")
