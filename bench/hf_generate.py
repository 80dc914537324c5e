"""Peer for bench/bench_sampler.py: HF `generate` with sampling, as ../shared/anchors'
torch_baseline.py measures it (its `gen_tput`), without the anchor's training part.

A random-init `LlamaForCausalLM` of the Llama-3.2-1B shape (the anchor's `LlamaConfig`), bf16,
SDPA attention, `generate(do_sample=True, min_new_tokens=new, max_new_tokens=new)` on random
prompt ids: one warm-up call of 8 tokens, then one timed call. new tokens/s = batch · new / s.

    python bench/hf_generate.py [--batch 1 64] [--prompt 128] [--new 256]
"""
import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                      num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                      max_position_embeddings=4096, rope_theta=500000.0,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).to("cuda").to(torch.bfloat16).eval()
    for batch in args.batch:
        ids = torch.randint(0, cfg.vocab_size, (batch, args.prompt), device="cuda")
        with torch.no_grad():
            model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=True,
                           pad_token_id=0)
            torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=args.new, min_new_tokens=args.new,
                           do_sample=True, pad_token_id=0)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        print(json.dumps(dict(what="hf_generate", batch=batch, prompt=args.prompt, new=args.new,
                              s=seconds, new_tokens_per_s=batch * args.new / seconds,
                              gpu=torch.cuda.get_device_name(0))), flush=True)


if __name__ == "__main__":
    main()
