import sys

from based_megatron.training.pretrain import main

sys.exit(main())
