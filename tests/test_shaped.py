"""The 70B-shaped base: its shape against the planner's arithmetic, weights that do not
depend on how ZeRO-3 partitions them, and the collectives a forward pass is counted to move."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from eraser_dist.distributed.plan import (
    PlanArguments,
    count_params,
    lora_params,
    make_plan,
    shaped_70b_architecture,
)
from eraser_dist.errors import EraserError
from eraser_dist.llm.models import load_base
from eraser_dist.llm.shaped import BLOCK, seeded_llama, seeded_values, shaped_70b_config


def small_config():
    """A Llama small enough for a test, with a weight spanning several seeded blocks."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=4099, hidden_size=256, intermediate_size=512,
                       num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                       tie_word_embeddings=False, attn_implementation="eager")


@pytest.mark.parametrize("layers", [1, 2, 80])
def test_shaped_model_has_the_planned_widths_and_parameter_count(layers):
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(shaped_70b_config(layers))
    arch = shaped_70b_architecture(layers)
    assert (arch.hidden_size, arch.intermediate_size, arch.num_heads, arch.num_kv_heads,
            arch.head_dim) == (8192, 28672, 64, 8, 128)
    assert sum(p.numel() for p in model.parameters()) == count_params(arch)
    q = model.model.layers[0].self_attn.q_proj.weight
    v = model.model.layers[0].self_attn.v_proj.weight
    assert tuple(q.shape) == (8192, 8192) and tuple(v.shape) == (1024, 8192)
    # rank-8 q/v LoRA: 8·(8192 + 8192) + 8·(8192 + 1024) per layer
    assert lora_params(arch, 8, ("q_proj", "v_proj")) == layers * 204800


def test_seeded_values_are_the_same_whatever_the_slice():
    whole = seeded_values("w", 0, 3 * BLOCK + 5)
    assert torch.equal(seeded_values("w", BLOCK - 3, 2 * BLOCK + 7),
                       whole[BLOCK - 3 : 2 * BLOCK + 7])
    assert not torch.equal(seeded_values("v", 0, 10), whole[:10])
    assert abs(float(whole.std()) - 0.02) < 1e-4


def _partitioned_parameters(rank: int, port: int) -> tuple[dict[str, torch.Tensor], int, int]:
    """Build the small seeded Llama inside ZeRO-3 on rank ``rank`` of 2: its gathered weights,
    the bytes of this rank's partitions, and the bytes this rank put into the all-gathers of
    one forward pass (counted by DeepSpeed's comms logger)."""
    torch.set_num_threads(1)
    from eraser_dist.distributed.zero import (
        collective_bytes,
        count_collectives,
        gathered,
        init_process_group,
        partition_base,
        partition_report,
        partitioned_loading,
    )

    init_process_group(rank, 2, "127.0.0.1", port, "gloo", timeout_s=60)
    loading = partitioned_loading(torch.float32)
    model = seeded_llama(small_config(), torch.float32)
    report = partition_report(model)
    assert all(p["partitioned"] and p["local_numel"] < p["numel"]
               for p in report if p["numel"] > 1)
    out = {}
    for name, param in model.named_parameters():
        with gathered([param]):
            out[name] = param.detach().clone()
    engine = partition_base(model.eval())
    count_collectives()
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3]]))
    forward_bytes = collective_bytes().get("all_gather_into_tensor", 0)
    del engine, loading
    return out, sum(p["local_numel"] for p in report) * 4, forward_bytes


def test_partitioned_construction_holds_the_single_process_model():
    from eraser_dist.distributed.zero import free_port

    whole = dict(seeded_llama(small_config(), torch.float32).named_parameters())
    port = free_port()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        ranks = [f.result(timeout=300) for f in
                 [pool.submit(_partitioned_parameters, r, port) for r in (0, 1)]]
    for name, param in whole.items():
        for rank, _, _ in ranks:
            assert torch.equal(rank[name], param.detach()), name
    assert torch.equal(whole["model.norm.weight"], torch.ones(256))
    # a forward pass gathers every weight once: each rank puts in all of its partitions
    for _, held, forward_bytes in ranks:
        assert forward_bytes == held


def test_plan_takes_the_shaped_base_by_name():
    args = PlanArguments(gpus=2, group_size=2, base="llama70b-shaped:2", lora_rank=8,
                         batch_size=1, seq_len=8)
    plan = make_plan(args)
    assert plan.architecture == "llama70b-shaped:2"
    assert plan.base_params == count_params(shaped_70b_architecture(2)) == 2_516_623_360
    assert plan.lora_params == 409_600


@pytest.mark.parametrize("name", ["llama70b-shaped:0", "llama70b-shaped:81",
                                  "llama70b-shaped:x", "llama70b-shaped:"])
def test_bad_shaped_names_are_refused(name):
    with pytest.raises(EraserError, match="whole number from 1 to 80"):
        load_base(name)
    with pytest.raises(EraserError, match="whole number from 1 to 80"):
        make_plan(PlanArguments(gpus=1, base=name))


def test_plan_wants_exactly_one_of_params_and_base():
    with pytest.raises(EraserError, match="exactly one of --params"):
        make_plan(PlanArguments(gpus=1))
    with pytest.raises(EraserError, match="exactly one of --params"):
        make_plan(PlanArguments(gpus=1, params=7e9, base="llama-2-7b"))
    with pytest.raises(EraserError, match="no known shape for base 'gpt-5'"):
        make_plan(PlanArguments(gpus=1, base="gpt-5"))
    assert make_plan(PlanArguments(gpus=1, base="llama-2-7b")).architecture == "llama-2-7b"
