"""Two CPU processes (torch.distributed.run, gloo): every rank computes the same eta from the gathered reward gaps."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_agree_on_eta(tmp_path):
    script = Path(__file__).with_name("dist_eta_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(script), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    # the ranks saw different rows (so their local gaps differ) ...
    assert ranks[0]["lambdas"] != ranks[1]["lambdas"]
    # ... yet computed the same eta at every step, and hold the same tracker state
    assert len(ranks[0]["eta"]) == 3 and ranks[0]["eta"] == ranks[1]["eta"]
    assert any(eta != 1.0 for eta in ranks[0]["eta"])
    assert ranks[0]["tracker"] == ranks[1]["tracker"]
