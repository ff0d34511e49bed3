"""Run by tests/test_train_fsdp.py under torchrun (2 CPU processes, gloo): one training step of a tiny FGM + CRM
sharded with FSDP2 (``fully_shard``; one CogVideoX block = one unit, as in configs/accelerate/fsdp.yaml), then the
full weights gathered and saved the way the trainer saves them. Rank 0 also takes the same step unsharded on the
whole batch and writes both results to ``OUT/result.pt``. Not a test module itself (no ``test_`` prefix)."""
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def tiny_models_and_batch():
    from flowctrl.models.crm import CameraReferenceModel
    from flowctrl.models.fgm import FlowGenerationModel, sparse_condition
    from flowctrl.models.flow_codec import FlowCodec
    from flowctrl.train.config import load_config
    from flowctrl.train.flow_loop import Stage1Trainable, make_scheduler

    torch.manual_seed(0)
    tiny = dict(num_attention_heads=2, attention_head_dim=8, time_embed_dim=32, num_layers=2,
                sample_height=4, sample_width=4, sample_frames=9)
    crm = CameraReferenceModel(**tiny)
    fgm = FlowGenerationModel(**tiny, reference_dim=crm.hidden_dim, control_tokens=8)
    for p in list(fgm.parameters()) + list(crm.parameters()):  # open the zero gates: every path carries gradient
        p.data.add_(torch.randn_like(p) * 0.02)
    codec = FlowCodec(latent_channels=4, block_out_channels=[8, 8, 8, 8], layers_per_block=1, norm_num_groups=4)
    sched = make_scheduler(load_config(None, {"scheduler": {"prediction_type": "v_prediction"}}))
    module = Stage1Trainable("fgm", {"fgm": fgm, "crm": crm}, sched)
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(4, 9, 1, 32, 32, generator=g) > 0.97).float()
    batch = {"latents": torch.randn(4, 3, 4, 4, 4, generator=g), "image_latents": torch.randn(4, 1, 4, 4, 4, generator=g),
             "condition": sparse_condition(torch.randn(4, 9, 2, 32, 32, generator=g) * 3 * mask, mask, 8.0),
             "strength": torch.ones(4), "plucker": torch.randn(4, 9, 6, 32, 32, generator=g),
             "noise": torch.randn(4, 3, 4, 4, 4, generator=g), "timesteps": torch.tensor([10, 300, 600, 900])}
    return module, codec, sched, batch


def one_step(module, batch):
    opt = torch.optim.SGD(module.parameters(), lr=0.1)  # linear in the gradient: sharded = unsharded to rounding
    loss = module(batch)
    loss.backward()
    opt.step()
    return loss.detach()


def main(out: Path) -> None:
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from flowctrl.train.config import load_config
    from flowctrl.train.flow_loop import save_final, with_full_weights

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    module, codec, sched, batch = tiny_models_and_batch()
    full_numel = sum(p.numel() for p in module.parameters())
    for m in module.modules():
        if isinstance(m, CogVideoXBlock):
            fully_shard(m)
    fully_shard(module.fgm)  # a nested unit too: its class becomes FSDPFlowGenerationModel, which saving must undo
    fully_shard(module)
    local_numel = sum(p.to_local().numel() for p in module.parameters())
    share = len(batch["latents"]) // world
    loss = one_step(module, {k: v[rank * share:(rank + 1) * share] for k, v in batch.items()})
    dist.all_reduce(loss)
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        trained = with_full_weights(module, state)
        cfg = load_config(None, {"scheduler": {"prediction_type": "v_prediction"}})
        save_final(cfg, trained, {"codec": codec, "image_codec": codec}, out / "final")
        reference, _, _, _ = tiny_models_and_batch()
        ref_loss = one_step(reference, batch)
        torch.save({"sharded_class": type(module.fgm).__name__, "saved_class": type(trained.fgm).__name__,
                    "loss": float(loss) / world, "ref_loss": float(ref_loss), "full_numel": full_numel,
                    "local_numel": local_numel, "reference": reference.state_dict()}, out / "result.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
