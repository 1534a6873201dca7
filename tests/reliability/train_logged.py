"""Run train_net.py's training (the same Trainer, setup and --resume) and append every
iteration's exact total loss to a file: ``python tests/reliability/train_logged.py LOSS_FILE
[train_net arguments]``. Used by test_exact_resume.py, which kills and resumes it."""

import importlib.util
import os
import sys

import torch
from detectron2.engine import HookBase, default_argument_parser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LossLog(HookBase):
    def __init__(self, path):
        self.path = path

    def after_step(self):
        loss = self.trainer.storage.history("total_loss").latest()
        with open(self.path, "a") as f:
            f.write(f"{self.trainer.iter} {float(loss).hex()}\n")
            f.flush()
            os.fsync(f.fileno())


def main():
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(ROOT, "train_net.py"))
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    loss_file, argv = sys.argv[1], sys.argv[2:]
    args = default_argument_parser().parse_args(argv)
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.register_hooks([LossLog(loss_file)])
    trainer.resume_or_load(resume=args.resume)
    trainer.train()


if __name__ == "__main__":
    main()
