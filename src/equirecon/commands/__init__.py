"""The `equirecon` commands (the top layer): each turns its arguments (`HfArgumentParser` dataclasses and
JSON/YAML recipes, :mod:`equirecon.command_line`) into calls of the packages below and writes the results.

* :mod:`.pretrain`: `equirecon pretrain` (:mod:`equirecon.training`, then :mod:`equirecon.evaluation`'s benchmark);
* :mod:`.evaluate`: `equirecon evaluate equivariance|knn|linear` (:mod:`equirecon.evaluation`);
* :mod:`.finetune`: `equirecon finetune classification|segmentation` (:mod:`equirecon.finetuning`).

Modules are imported only when their command runs, so `equirecon --help` stays fast.
"""
