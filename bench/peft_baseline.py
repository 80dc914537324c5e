"""Peer for bench/bench_lora.py: an HF transformers + PEFT LoRA SFT step, Llama-3.2-1B shape.

What a PyTorch user gets for the same work, in the style of the SFT step of
../shared/anchors/torch_baseline.py: a random-init `LlamaForCausalLM` from a `LlamaConfig` (no
hub access), SDPA attention, bf16 autocast, `model(input_ids=ids, labels=ids)` (HF's shifted
cross-entropy), torch's fused AdamW — here over the adapter parameters only (the only ones
`peft.get_peft_model` leaves with `requires_grad`). Adapters: `peft.LoraConfig(r=16,
lora_alpha=32, lora_dropout=0, target_modules=[q,k,v,o,gate,up,down]_proj)`, as easyalign's.

The base is stored bf16 (`--base-dtype bfloat16`: the model cast to bf16 before PEFT wraps it,
as LoRA recipes load it with `torch_dtype=bfloat16`; PEFT keeps the adapters fp32,
`autocast_adapter_dtype=True`) or fp32 (`float32`: the anchor's fp32 weights under autocast).
Timing as the anchor: 2 warm-up steps, then the mean of `--steps` steps between two
`cuda.synchronize()`; peak memory from `torch.cuda.max_memory_allocated` over the timed steps.
MFU: the two counts of bench_lora.py (mfu_6n: 6·N + 6·L·d·S, N all parameters including the
adapters; mfu_lora: 4·N_base + 6·N_adapter + 6·L·d·S), ÷ 989 TFLOP/s.

    python bench/peft_baseline.py [--batch 4] [--seq 2048] [--base-dtype bfloat16 float32] [--cpu]
"""
import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

START = time.perf_counter()
PEAK_FLOPS = 989e12  # H100/H200 SXM dense bf16, the anchors' MFU denominator
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def log(**fields):
    print(json.dumps(fields), flush=True)


def llama_config(tiny: bool) -> LlamaConfig:
    if tiny:  # easyalign's "tiny" preset
        return LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=16, max_position_embeddings=512, attn_implementation="sdpa")
    return LlamaConfig(  # the anchor's Llama-3.2-1B shape
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
        rope_theta=500000.0, tie_word_embeddings=True, attn_implementation="sdpa")


def dtypes(model, frozen: bool) -> str:
    """The dtypes the frozen (or the trained) parameters are stored in."""
    return ",".join(sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                            if p.requires_grad != frozen}))


def measure(model, opt, vocab_size: int, batch: int, seq: int, dev: str, steps: int) -> float:
    """Mean seconds of one train step over `steps` steps after 2 warm-up steps (the anchor's
    timing); resets the CUDA peak-memory counter after the warm-up."""
    cuda = dev == "cuda"
    ids = torch.randint(0, vocab_size, (batch, seq), device=dev)

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(2):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[4])
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--base-dtype", nargs="+", default=["bfloat16"])
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--cpu", action="store_true", help="the tiny shape on the CPU (a smoke test)")
    args = ap.parse_args()
    import peft
    import transformers

    dev = "cpu" if args.cpu else "cuda"
    cuda = dev == "cuda"
    torch.manual_seed(0)
    log(what="versions", torch=torch.__version__, transformers=transformers.__version__,
        peft=peft.__version__, gpu=torch.cuda.get_device_name(0) if cuda else "cpu")
    cfg = llama_config(args.cpu)
    seq = 64 if args.cpu else args.seq
    for base_dtype in args.base_dtype:
        with torch.device(dev):
            model = LlamaForCausalLM(cfg)
        model = model.to(getattr(torch, base_dtype))
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS,
            bias="none", task_type="CAUSAL_LM"))
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        n_params = sum(p.numel() for p in model.parameters())
        n_adapter = sum(p.numel() for p in trainable)
        n_base = n_params - n_adapter
        stored = {"base_dtype": dtypes(model, frozen=True),
                  "adapter_dtype": dtypes(model, frozen=False)}
        opt = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
        for batch in args.batch:
            dt = measure(model, opt, cfg.vocab_size, batch, seq, dev, args.steps)
            tokens = batch * seq
            attention = cfg.num_hidden_layers * cfg.hidden_size * seq
            six_n = 6 * n_params + 6 * attention
            aware = 4 * n_base + 6 * n_adapter + 6 * attention
            log(what="peft_lora_sft_step", preset="tiny" if args.cpu else "llama-3.2-1b",
                batch=batch, seq=seq, rank=args.rank, alpha=args.alpha, targets=",".join(TARGETS),
                **stored, compute_dtype="bfloat16",
                params=n_params, adapter_params=n_adapter, step_s=dt, tokens_per_s=tokens / dt,
                mfu_6n=six_n * tokens / dt / PEAK_FLOPS, mfu_lora=aware * tokens / dt / PEAK_FLOPS,
                peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                device=torch.cuda.get_device_name(0) if cuda else "cpu",
                wall_s=time.perf_counter() - START)
        del model, opt, trainable
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line the device call's log keeps (it greps for '{')
        log(what="peft_lora_sft_fail", err=f"{type(e).__name__}: {str(e)[:300]}")
        raise
