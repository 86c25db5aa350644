"""`python -m equirecon COMMAND ...`: the `equirecon` console script, for launchers that run a module
(`accelerate launch -m equirecon pretrain ...`, `torchrun -m equirecon pretrain ...`)."""

import sys

from .commands import main

if __name__ == "__main__":
    sys.exit(main())
