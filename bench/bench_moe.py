"""MoE SFT train step at the Qwen3-30B-A3B layer shape, fewer layers, on one GPU.

The library's own jitted step, as bench_sft.py measures it (`make_train_step` with the SFT loss,
AdamW, clipping, donated state; bf16 compute, fp32 master weights and AdamW state, cuDNN
attention on GPU), on `qwen3_moe`: every layer's MLP is 128 SwiGLU experts of width 768, top-8
routed and renormalised, the router in fp32, the experts multiplied by `jax.lax.ragged_dot` over
expert-sorted tokens (`easyalign/model/moe.py`), and the SFT loss adds the router's
load-balancing loss (`router_aux_loss_coef` 0.001, as SFT trains it).

Shape: Qwen3-30B-A3B's layer (hidden 2048, 32 q / 4 kv heads of 128, q/k norm, 128 experts ×
768, top 8, vocab 151,936, untied head) with `--layers` of its 48 (default 8). fp32 weights plus
fp32 AdamW μ, ν plus fp32 gradients are 16 bytes per parameter: all 48 layers (30.5B) would need
~490 GB, so one H200 (~139 GiB, 92% of it given to XLA) holds 8: `easyalign doctor` estimates
103 GiB at 4×2048 (params 20.9, AdamW 41.8, gradients 20.9, activations 10.3, logits 9.3);
10 layers are 124 GiB, too close to the ~129 GiB XLA gets (0.92 of 140), 12 do not fit.

MFU counts the parameters a token uses (the anchors' count with N = N_active):

    flops/token = 6·N_active + 6·L·d·S
    N_active    = N_total − L·(E − k)·3·d·f_e     (`ModelConfig.active_param_count`): embedding,
                  LM head, attention, norms, the whole router [d, E] and k of the E experts
    6·L·d·S     the anchors' causal-attention term with d = hidden (Qwen3's H·hd = 2d, so the
                  score/value matmuls are under-counted by the same 6·L·d·S: ~3% of the total
                  at 8 layers × 2048; kept as the anchors count it)

÷ 989 TFLOP/s per GPU, as every figure in docs/benchmarks.md. Recomputation, the fp32 router and
the routing glue (sort, gather, scatter) are not counted.

Which kernel multiplies the experts, checked twice and written in the JSON line:
  moe_impl          "ragged_dot" when the step's jaxpr holds `ragged_dot_general` (3 per layer
                    forward, 6 backward: `ragged_dot_ops`) — the grouped matmul, not a dense
                    loop or one-hot over experts; "dense" otherwise
  ragged_lowering   what XLA compiled them to, read from the optimized HLO: "grouped" (the
                    ragged-dot kept for a grouped kernel — cuDNN's, on GPU — or lowered to a
                    kernel, and no array of shape [E, N·k, …] anywhere), "dense" (XLA's or JAX's
                    fallback expanded the sorted rows to a masked [E, N·k, …] array per group:
                    E× the FLOPs and memory), "mixed" (e.g. forward and activation gradient
                    grouped, weight gradient dense). `hlo_ragged_dots` / `hlo_dense_shapes` are
                    the counts behind it. On CPU it is always "dense" (JAX's generic lowering).
`--ragged-lowering pallas` turns on JAX's Pallas/Triton lowering of ragged_dot on GPU
(`jax_ragged_dot_use_gpu_pallas_triton_lowering`; absent from jax 0.11.2). Measured on an H200
(2026-11-30, jax 0.11.2): XLA lowers ragged_dot densely ("dense", [128, 65536, 768] arrays, a
142 GiB temporary: out of memory), so `--capacity-factor c` runs the experts as batched matmuls
over capacity buffers instead (`moe_capacity_factor`; moe_impl "capacity").

Timing: the step is compiled once (`compile_s`), run twice unmeasured, then the median of
`--steps` calls; `peak_gib` from the device's allocator, `xla_temp_gib` XLA's own temporary
buffer size for the step, `doctor_gib` easyalign doctor's estimate for the same run.

    python bench/bench_moe.py [--layers 8] [--batch 4] [--seq 2048] [--scan 1] [--remat none]
        [--ragged-lowering xla|pallas] [--capacity-factor 1.25] [--cpu]
"""

import argparse
import re
import time

import common  # noqa: F401  (sets XLA flags before jax)

import jax

from configs import sft as sft_config
from easyalign import doctor, sharding
from easyalign.model import preset
from easyalign.train import optim

# --cpu: the same family and traits (q/k norm, top-k renormalised, router loss) at a tiny shape.
TINY_MOE = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_heads=4,
                num_kv_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
                moe_intermediate_size=32, max_position_embeddings=512)


def ragged_dot_count(jaxpr) -> int:
    """`ragged_dot_general` equations in a jaxpr and every jaxpr nested in it (scan bodies,
    custom-vjp rules, remat)."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == "ragged_dot_general"
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr → Jaxpr
                if hasattr(inner, "eqns"):
                    count += ragged_dot_count(inner)
    return count


def hlo_lowering(hlo: str, experts: int, rows: int, widths: tuple[int, int]) -> dict:
    """How the optimized HLO multiplies the experts: ragged-dot ops kept (for a grouped kernel)
    and the distinct shapes of the dense fallback's per-expert copies of the sorted rows, the
    arrays of E × N·k × (d or f_e) in any order (materialised, or inside a fusion)."""
    kept = len(re.findall(r"\bragged-dot\(", hlo))
    dense, expanded = set(), [sorted((experts, rows, w)) for w in widths]
    for dims in re.findall(r"\b(?:bf16|f16|f32)\[([0-9,]+)\]", hlo):
        shape = tuple(int(d) for d in dims.split(","))
        if sorted(shape) in expanded:
            dense.add(shape)
    verdict = "mixed" if kept and dense else "dense" if dense else "grouped"
    return {"ragged_lowering": verdict, "hlo_ragged_dots": kept,
            "hlo_dense_shapes": [list(s) for s in sorted(dense)][:4]}


def doctor_gib(config, batch: int, seq: int, fsdp: int) -> float:
    """easyalign doctor's memory estimate per device for this step (GiB)."""
    c = sft_config.get_config()
    c.data.max_length, c.train.batch_size = seq, batch
    mesh = {"data": 1, "fsdp": fsdp, "tensor": 1}
    return sum(doctor.estimate(c, config, [], mesh).values()) / 2**30


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="qwen3-30b-a3b")
    ap.add_argument("--layers", type=int, default=8, help="layers kept of the preset's")
    common.add_train_step_args(ap, batch=[4])
    ap.add_argument("--ragged-lowering", default="xla", choices=("xla", "pallas"),
                    help="GPU lowering of ragged_dot: XLA's, or JAX's Pallas/Triton kernel")
    ap.add_argument("--capacity-factor", type=float, default=0.0,
                    help="moe_capacity_factor: 0 = dropless ragged_dot, c > 0 = capacity buffers")
    args = ap.parse_args()
    tiny = args.cpu
    if args.ragged_lowering == "pallas":
        jax.config.update("jax_ragged_dot_use_gpu_pallas_triton_lowering", True)
    config = preset(args.preset, num_layers=2 if tiny else args.layers, dtype="bfloat16",
                    param_dtype=args.param_dtype, attention_impl="xla" if tiny else "cudnn",
                    remat=args.remat, scan_layers=bool(args.scan), logits_chunk=args.chunk,
                    moe_capacity_factor=args.capacity_factor, **(TINY_MOE if tiny else {}))
    if not config.num_experts:
        raise SystemExit(f"bench_moe: preset {args.preset!r} is not a mixture of experts")
    seq = 64 if tiny else args.seq
    devices = jax.devices()[:args.devices or None]
    mesh = sharding.make_mesh(1, args.fsdp, 1, devices=devices)
    fsdp = dict(zip(mesh.axis_names, mesh.devices.shape))["fsdp"]
    tx, schedule = optim.make_optimizer(sft_config.get_config().optim, total_steps=1000)
    n_total, n_active = config.param_count(), config.active_param_count()
    # The anchors' count with the parameters a token uses (module docstring).
    flops = common.train_flops_per_token(n_active, config.num_layers, config.hidden_size, seq)
    for batch in args.batch:
        fields = dict(what="easyalign_moe_sft_step", preset=args.preset,
                      shape="tiny" if tiny else f"{args.preset} × {config.num_layers} layers",
                      layers=config.num_layers, experts=config.num_experts,
                      top_k=config.num_experts_per_tok, n_total=n_total, n_active=n_active,
                      batch=batch, seq=seq, remat=args.remat, param_dtype=args.param_dtype,
                      scan_layers=bool(args.scan), logits_chunk=args.chunk,
                      router_aux_loss_coef=config.router_aux_loss_coef,
                      ragged_dot_flag=args.ragged_lowering, xla_flags=common.extra_flags(),
                      devices=len(devices),
                      doctor_gib=doctor_gib(config, batch, seq, fsdp))
        with sharding.use_mesh(mesh):
            step, state, data = common.sft_step_and_batch(config, mesh, tx, schedule, batch, seq)
            start = time.perf_counter()
            traced = step.trace(state, data, None)
            compiled = traced.lower().compile()
            fields["compile_s"] = time.perf_counter() - start
            ops = ragged_dot_count(traced.jaxpr.jaxpr)
            impl = "capacity" if config.moe_capacity_factor else "ragged_dot" if ops else "dense"
            fields.update(moe_impl=impl, capacity_factor=config.moe_capacity_factor,
                          ragged_dot_ops=ops,
                          **hlo_lowering(compiled.as_text(), config.num_experts,
                                         batch * seq * config.num_experts_per_tok // fsdp,
                                         (config.hidden_size, config.moe_intermediate_size)))
            memory = compiled.memory_analysis()
            fields["xla_temp_gib"] = (None if memory is None
                                      else memory.temp_size_in_bytes / 2**30)
            holder = {"state": state}
            del state

            def run():
                holder["state"], metrics = compiled(holder["state"], data, None)
                holder["metrics"] = metrics
                return metrics["loss"]

            try:
                seconds = common.time_calls(run, repeats=args.steps)
            except Exception as e:  # out of memory, say: still say which kernels it compiled
                common.log(**fields, error=f"{type(e).__name__}: {str(e)[:300]}",
                           device=common.device_name())
                raise
        tokens = batch * seq
        metrics = jax.device_get(holder["metrics"])
        common.log(**fields, loss=float(metrics["loss"]),
                   router_loss=float(metrics["router_loss"]),
                   step_s=seconds, tokens_per_s=tokens / seconds,
                   mfu=flops * tokens / seconds / (common.PEAK_FLOPS * len(devices)),
                   flops_per_token=flops, peak_gib=common.peak_gib(),
                   device=common.device_name())
        del holder, step, compiled, traced


if __name__ == "__main__":
    main()
