"""Sampling from the model on the device: methods, the slot engine, prompt-list front-ends.

    methods   how one token is drawn from logits (greedy, temperature, top-k, top-p; the random
              ones by inverse transform, `categorical`) and the config registry
              `SAMPLING_METHODS`;
    decode    `generate`: prefill, a `while_loop` decode and continuous batching — decode slots
              refilled from a prompt queue inside the loop, G samples per prompt prefilled once;
    front     chunked calls over a prompt list (`sample_prompt_batches`) and the chat-text
              `Sampler`.

Everything a caller needs is importable from `easyalign.sampler`.
"""

from easyalign.sampler.decode import Generation, generate, row_keys
from easyalign.sampler.front import (Completion, Sampler, as_messages, bucket_length,
                                     sample_prompt_batches)
from easyalign.sampler.methods import (CDF_BLOCK, SAMPLING_METHODS, Greedy, SamplingMethod,
                                       Temperature, TopK, TopP, categorical, inverse_cdf,
                                       method_from_config, sampling_from_config, sampling_method)

__all__ = ["CDF_BLOCK", "Completion", "Generation", "Greedy", "SAMPLING_METHODS", "Sampler",
           "SamplingMethod", "Temperature", "TopK", "TopP", "as_messages", "bucket_length",
           "categorical", "generate", "inverse_cdf",
           "method_from_config", "row_keys", "sample_prompt_batches", "sampling_from_config",
           "sampling_method"]
