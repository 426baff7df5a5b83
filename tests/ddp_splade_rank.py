"""One rank of a two-process run of tests/test_splade.py's tiny SPLADE recipe (torchrun, gloo on CPU), for
tests/test_distributed.py: ``python -m torch.distributed.run --nproc_per_node 2 tests/ddp_splade_rank.py INIT OUTPUT
[CHECKPOINT]``. Rank 0 saves the final weights and the logged losses to OUTPUT/final.pt."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrievers.train.common import make_resumable, prepare_torchrun_rank  # noqa: E402

prepare_torchrun_rank()

import torch  # noqa: E402

from tests.test_splade import make_trainer  # noqa: E402

init, output = Path(sys.argv[1]), Path(sys.argv[2])
resume = sys.argv[3] if len(sys.argv) > 3 else None
steps = {"per_device_train_batch_size": 4, "eval_strategy": "steps", "eval_steps": 2, "save_steps": 1}
model, trainer = make_trainer(init, output, max_train_samples=40, eval_samples=8,
                              args={"num_train_epochs": 2} | steps, phase_args=steps)
make_resumable(trainer, "no_duplicates", resume)
trainer.train(resume_from_checkpoint=resume)
if trainer.is_world_process_zero():
    torch.save({"weights": {k: v.clone() for k, v in model.state_dict().items()},
                "losses": {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e},
                "world_size": trainer.args.world_size}, output / "final.pt")
