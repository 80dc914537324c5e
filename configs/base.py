"""Every default of every phase, one line of explanation each.

Phase configs (`configs/sft.py`, `configs/dpo.py`, ...) start from `get_config()` and override
only what differs; presets (`--config=configs/sft.py:tiny`) override a little more. Any field can
be set from the command line: `--config.optim.lr=1e-6`. Unknown keys are errors.
"""

import dataclasses
import os
from pathlib import Path

from ml_collections import ConfigDict

from easyalign.config_keys import did_you_mean
from easyalign.data.records import COLUMN_FIELDS
from easyalign.data.world import WorldConfig


def get_config(preset: str = "") -> ConfigDict:
    c = ConfigDict()
    c.phase = "sft"                      # which algorithm runs (set by each phase config)
    c.preset = preset                    # the preset the phase config was built with
    #                                      (--config=configs/sft.py:tiny; "" = none)
    c.workdir = "runs/default"           # all outputs: checkpoints/, logs/, plots/, config.json

    # ------------------------------------------------------------------ model
    c.model = m = ConfigDict()
    m.preset = "world-teacher"           # shape preset (easyalign/model/presets.py) when not loading
    m.init = "scratch"                   # scratch | hf | checkpoint | gguf | derive: where the
    #                                      weights come from (derive: a student from a teacher)
    m.path = ""                          # HF dir | checkpoint | .gguf file or "smollm2" (installed
    #                                      GGUF) | for derive the teacher, any of these or "@stage"
    m.layers = ""                        # derive: teacher layers kept, "" = all | every_other |
    #                                      first:k | spread:k (evenly, first and last) | 0,2,4,29
    m.intermediate_size = 0              # derive: MLP width kept (0 = the teacher's), channels
    #                                      by weight norm (easyalign/model/student.py)
    m.head = "lm"                        # lm | scalar (reward/value models)
    m.dtype = "float32"                  # compute dtype (bfloat16 on GPU)
    m.param_dtype = "float32"            # master weights and optimizer state dtype
    m.attention_impl = "xla"             # xla | cudnn (GPU, bf16/fp16 compute; fp32 uses xla)
    m.remat = "none"                     # none | full | dots | save_proj | save_proj_attn
    m.scan_layers = True                 # lax.scan over layers: compile time O(1) in depth
    #                                      (False unrolls: faster steps on GPU, longer compiles)
    m.logits_chunk = 512                 # sequence chunk of vocabulary projections in losses
    #                                      (shortened to fit scoring.logits_budget:
    #                                       a sixth of a device's memory, >= 8 GiB)
    m.vocab_size = 0                     # 0 = from the tokenizer (scratch models only)
    m.overrides = ""                     # other ModelConfig fields: "num_layers=3,hidden_size=96"
    m.lora = ConfigDict()                # low-rank adapters (easyalign/model/lora.py)
    m.lora.rank = 0                      # r; 0 = no adapters (train every weight)
    m.lora.alpha = 16.0                  # scale s = alpha / r (alpha / sqrt(r) with rslora)
    m.lora.dropout = 0.0                 # dropout on the adapters' input while training
    m.lora.targets = "all"               # projections: all | attn | mlp | q,k,v,o,gate,up,down
    #                                      (or q_proj, ..., qkv_proj, gate_up_proj, a regex)
    m.lora.rslora = False                # rank-stabilised scale alpha / sqrt(r)
    m.lora.base_dtype = ""               # dtype of the frozen base ("" = param_dtype; bfloat16
    #                                      halves its memory)

    # ------------------------------------------------------------------ mesh & processes
    c.mesh = ConfigDict()
    c.mesh.data = 1                      # pure data-parallel axis
    c.mesh.fsdp = -1                     # fully-sharded data-parallel axis (-1 = the rest)
    c.mesh.tensor = 1                    # tensor-parallel axis (heads, MLP, vocab)
    c.distributed = ConfigDict()
    c.distributed.coordinator = ""       # HOST:PORT of process 0 ("" = SLURM variables or single)
    c.distributed.num_processes = 0      # 0 = from SLURM or 1
    c.distributed.process_id = -1        # -1 = from SLURM or 0
    c.distributed.cpu_collectives = "gloo"  # CPU-only multi-process collectives
    c.distributed.heartbeat_timeout_s = 30   # a process silent this long is declared dead and
    #                                          the others stop with an error (JAX's default: 100)
    c.distributed.init_timeout_s = 300   # a process the others do not join within this stops
    #                                      with one line

    # ------------------------------------------------------------------ data
    c.data = d = ConfigDict()
    d.source = "world"                   # world | file (.jsonl .json .csv [.gz], .parquet) | hf:NAME
    d.format = ""                        # "" = from the file suffix | jsonl | json | csv | parquet
    d.encoding = "utf-8"                 # of text files (a UTF-8 BOM is dropped), e.g. cp1252
    d.columns = ConfigDict({f: "" for f in COLUMN_FIELDS})  # field <- source column ("" = as
    #                                      stored); "instruction+input" joins, "chosen.-1.content"
    d.on_empty = "drop"                  # drop | error | keep records with an empty response/turn
    d.mix = ()                           # more training files mixed into source's records:
    #                                      "PATH" (all) or "PATH*N" (N drawn); each file's own
    #                                      layout, less its held-out split (eval_fraction ...);
    #                                      "PATH*N:prompt=goal,response=target" maps its columns
    #                                      as data.columns does for source
    d.eval_source = "auto"               # auto | world | path | hf:NAME | "" (no eval); auto =
    #                                      the world's held-out files, an hf:DIR's own eval_split
    #                                      files, or a held-out split of source
    d.eval_fraction = 0.05               # auto: hold out this fraction of a source's records ...
    d.eval_max = 1000                    # ... at most this many (0 = no cap), never trained on
    d.eval_seed = 0                      # auto: which records are held out (not train.seed)
    d.split = "train"                    # split of an hf: source (a dataset or a directory)
    d.eval_split = "test"                # split of an hf: eval_source (auto: of an hf:DIR)
    d.tokenizer = ""                     # tokenizer dir ("" = the world's, or the HF model's)
    d.max_length = 64                    # static sequence length of every batch
    d.max_prompt_length = 0              # prompts are cut from the left to this (0 = room for the
    #                                      longest response, at least max_length // 2 for the prompt)
    d.on_overflow = "truncate"           # truncate | drop | error for over-long examples
    d.pack = False                       # pack several examples per row with segment ids
    d.world = ConfigDict(dataclasses.asdict(WorldConfig()))  # the built-in world (data/world.py)
    d.world.dir = ""                     # where world + tokenizer live ("" = ../world-<hash> of workdir)

    # ------------------------------------------------------------------ training loop
    c.train = t = ConfigDict()
    t.steps = 200                        # optimizer steps
    t.batch_size = 32                    # global batch (examples or pairs) per step
    t.grad_accum = 1                     # micro-batches per step (batch_size divisible by it)
    t.seed = 0                           # parameter init, dropout-free sampling, data order
    t.log_every = 10                     # metrics fetched from the device every N steps
    t.eval_every = 100                   # evaluation every N steps (0 = only at the end)
    t.eval_batches = 8                   # batches per evaluation (0 = the whole eval set)
    t.checkpoint_every = 100             # checkpoint every N steps (and always at the end)
    t.keep_checkpoints = 2               # latest checkpoints kept (the best is kept besides)
    t.async_checkpointing = True         # write checkpoints in the background
    t.plot = True                        # PNG curves into workdir/plots at the end
    t.progress_bar = True                # tqdm progress bar on process 0
    t.dead_model_steps = 20              # warn when the gradient norm is 0 this many steps in a row
    t.allow_config_change = False        # resume checkpoints made with another training config
    #                                      (lr, data content, ...); both configs are kept

    # ------------------------------------------------------------------ optimizer
    c.optim = o = ConfigDict()
    o.name = "adamw"                     # adamw | adafactor | sgd | lion
    o.lr = 3e-4                          # peak learning rate
    o.schedule = "cosine"                # cosine | linear | constant (after warm-up)
    o.warmup_steps = 10                  # linear warm-up from 0
    o.min_lr_ratio = 0.1                 # final lr = min_lr_ratio · lr (cosine/linear)
    o.b1 = 0.9
    o.b2 = 0.95
    o.eps = 1e-8
    o.weight_decay = 0.0                 # decoupled; never applied to norms or biases
    o.clip_norm = 1.0                    # global-norm clipping (0 = off)

    # ------------------------------------------------------------------ speed accounting
    c.perf = ConfigDict()
    c.perf.peak_tflops = 989.0           # per-device bf16 peak for MFU (H100 SXM dense)
    return c



# ---------------------------------------------------------------------- the real preset
# Every stage's `real` preset: SmolLM2-135M-Instruct from its GGUF (`scripts/setup_env.sh real`)
# on the public data in ../shared/data, held-out splits of the same files for evaluation.
REAL_MODEL = "smollm2"                   # the installed GGUF (easyalign.hf.gguf.INSTALLED)
ALPACA = "alpaca/alpaca_5000.json"       # SFT: instruction + input -> prompt, output -> response
HH_HARMLESS = "hh-rlhf/harmless-base/test.jsonl.gz"  # reward, DPO, PPO, teacher data, distill
ADVBENCH = "advbench/harmful_behaviors.csv"
TRUTHFULQA_MC = "truthfulqa/data/v1/mc_task.json"


def shared_data_dir() -> Path:
    """`EASYALIGN_SHARED_DATA`, default `../shared/data` beside the repository."""
    return Path(os.environ.get("EASYALIGN_SHARED_DATA")
                or Path(__file__).resolve().parents[2] / "shared" / "data")


def real(c: ConfigDict, data_file: str, max_length: int) -> ConfigDict:
    """The settings every `real` preset shares: a shared data file with a held-out tenth (the
    same rows in every stage and in the evaluation's suites), real lengths, fp32 master weights."""
    c.data.source = str(shared_data_dir() / data_file)
    c.data.max_length = max_length
    c.data.eval_fraction = REAL_EVAL_FRACTION
    c.train.log_every = 10
    c.train.eval_batches = 4
    return c


REAL_EVAL_FRACTION = 0.1                 # held out of each real file, at most data.eval_max rows


def mix_benign(c: ConfigDict, count: int = 1000) -> ConfigDict:
    """Mix `count` benign Alpaca prompts (its training side) into an HH-RLHF harmless stage:
    trained only on red-team prompts, PPO learned to refuse benign requests too (over-refusal
    +10 points) and the distilled student refused 21% of them (H200, 2026-11-30)."""
    c.data.mix = (f"{shared_data_dir() / ALPACA}*{count}",)
    return c


def unknown_preset(file: str, preset: str, presets: tuple[str, ...]) -> ValueError:
    """The error of a preset `file` does not offer: its presets and the closest of them
    (`configs/sft.py: unknown preset 'tinyy' (tiny | real); did you mean 'tiny'?`)."""
    hint = did_you_mean(preset, presets)
    return ValueError(f"{file}: unknown preset {preset!r} ({' | '.join(presets)})"
                      + (f"; {hint}" if hint else ""))
