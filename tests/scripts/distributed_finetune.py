"""Run by tests/test_finetune.py under `torch.distributed.run --nproc_per_node=2`: a full fine-tune of the
classification head on CPU (gloo), DDP without `find_unused_parameters`, so a parameter that gets no gradient
would stop the first step."""

import sys

from equirecon.commands.finetune import main

if __name__ == "__main__":
    checkpoint, output_dir = sys.argv[1:3]
    sys.exit(
        main(
            ["classification", "--model", checkpoint, "--output_dir", output_dir]
            + ["--max_train_samples", "32", "--max_eval_samples", "16", "--max_steps", "2"]
            + ["--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8"]
            + ["--ddp_backend", "gloo", "--ddp_find_unused_parameters", "False", "--use_cpu", "True"]
            + ["--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "True"]
        )
    )
