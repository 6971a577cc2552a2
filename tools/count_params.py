"""Print the parameter count of every model preset (built on the meta device: nothing is allocated).

    python tools/count_params.py [--vocab-size N] [PRESET ...]
"""

import argparse

from based_megatron.config import PRESETS, build_config
from based_megatron.model.based_model import count_parameters


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", default=list(PRESETS), help="presets to count (default: all)")
    parser.add_argument("--vocab-size", type=int, default=None, help="override the preset's vocabulary size")
    args = parser.parse_args()
    print(f"{'preset':<18} {'layers':>6} {'hidden':>6} {'vocab (padded)':>15} {'parameters':>14}")
    for name in args.presets:
        config = build_config(name, vocab_size=args.vocab_size)
        count = count_parameters(config)
        print(f"{name:<18} {config.num_layers:>6} {config.hidden_size:>6} {config.padded_vocab_size:>15,} "
              f"{count:>14,} ({count / 1e6:.1f}M)")


if __name__ == "__main__":
    main()
