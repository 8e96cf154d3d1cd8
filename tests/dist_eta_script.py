"""Run by tests/test_trainer_distributed.py under `torch.distributed.run --nproc_per_node 2` (gloo, CPU).

Trains a tiny model for a few steps with HaNo on and writes this rank's eta trajectory and batch lambdas."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import preference_dataset  # noqa: E402
from trainer_utils import make_trainer  # noqa: E402

from hanorec_trl.testing import tiny_qwen2, tiny_tokenizer  # noqa: E402

out = Path(sys.argv[1])
tok = tiny_tokenizer()
ds = preference_dataset(n=12, with_images=False, lambdas=[0.5 + 0.1 * i for i in range(12)])
trainer = make_trainer(tiny_qwen2(tok), tok, ds, out / "run", use_hardness=True, responsiveness_warmup=1,
                       lora_noise_std=0.05, max_steps=3)
seen_lambdas = []
inner = trainer.data_collator


def recording(examples):
    batch = inner(examples)
    seen_lambdas.append(batch["hano_lambda"].tolist())
    return batch


trainer.data_collator = recording
trainer.train()
rank = trainer.accelerator.process_index
record = {
    "world_size": trainer.accelerator.num_processes,
    "eta": [h["hano/eta"] for h in trainer.state.log_history if "hano/eta" in h],
    "tracker": trainer.responsiveness_tracker.state_dict(),
    "lambdas": seen_lambdas,
}
(out / f"rank{rank}.json").write_text(json.dumps(record))
# Leave the process group before the interpreter exits: a gloo group still alive at teardown can abort the process
# (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#190489).
trainer.accelerator.wait_for_everyone()
trainer.accelerator.state.destroy_process_group()
