"""FSDP on CPU: accelerate runs FSDP only on GPUs (with ``cpu=True`` it silently falls back to DDP), so this
drives FSDP2 itself over 2 gloo processes (tests/fsdp_worker.py): the FGM + CRM sharded one CogVideoX block per
unit take exactly the step the unsharded models take on the whole batch, and the gathered full weights, saved
by the trainer's own path (``with_full_weights`` → ``save_final``), load in the pipeline."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def test_fsdp_sharded_step_equals_the_unsharded_one_and_saves_whole_weights(tmp_path):
    from flowctrl.pipelines.flow_generation import FlowGenerationPipeline

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "fsdp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = torch.load(tmp_path / "result.pt")
    assert (res["sharded_class"], res["saved_class"]) == ("FSDPFlowGenerationModel", "FlowGenerationModel")
    assert res["local_numel"] < 0.6 * res["full_numel"]                # each process held about half
    assert res["loss"] == pytest.approx(res["ref_loss"], rel=1e-5)
    assert json.loads((tmp_path / "final" / "fgm" / "config.json").read_text())["_class_name"] == "FlowGenerationModel"
    pipe = FlowGenerationPipeline.from_pretrained(tmp_path / "final")
    ref = res["reference"]
    for prefix, model in (("fgm.", pipe.fgm), ("crm.", pipe.crm)):
        for name, value in model.state_dict().items():
            assert torch.allclose(value, ref[prefix + name], atol=1e-6), prefix + name
