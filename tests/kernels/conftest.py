"""Kernel tests run the Triton kernels on CPU tensors through Triton's interpreter (CI has no GPU).

TRITON_INTERPRET must be set before the kernels are decorated; the fused modules are imported lazily by
based_kernels, so setting it here (before any test module of this folder imports them) is enough. Should another
test have imported them already, they are dropped so that the next import decorates them for the interpreter.
The interpreter mis-handles bf16, so the tests use fp32 and fp16.
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
for _name in [m for m in sys.modules if m.startswith("based_kernels.") and m.rsplit(".", 1)[-1] in
              ("fused", "triton_kernels")]:
    del sys.modules[_name]
