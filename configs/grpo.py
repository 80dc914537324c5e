"""GRPO (and Dr. GRPO, DAPO-style aggregation, RLOO, GSPO): group rollouts, verifiable rewards.

    easyalign grpo --config=configs/grpo.py:tiny --config.workdir=runs/demo/grpo

starts from `@sft` (the SFT stage of the same pipeline directory). Units: `train.steps` counts
iterations (one group rollout of `train.batch_size` prompts × `grpo.num_generations`
completions, then `grpo.num_iterations` passes over it in minibatches of `grpo.minibatch_size`
completions); `train.log_every`, `eval_every` and `checkpoint_every` count iterations too.
`data.max_length` is the prompt block plus the response budget `grpo.max_new_tokens`.
Key names follow TRL's GRPOConfig where it has one (num_generations, epsilon, epsilon_high, beta,
loss_type, num_iterations, importance_sampling_level, temperature).

Presets: `tiny` (the built-in world, verifiable `world` reward: exact match, fact recall,
refusal and "I don't know" rules); `real`: the real SFT policy against the real reward model on
HH-RLHF harmless prompts (the README's real-pipeline table).
"""

from ml_collections import ConfigDict

from configs import base


def get_config(preset: str = ""):
    c = base.get_config(preset)
    c.phase = "grpo"
    c.workdir = "runs/demo/grpo"
    c.model.init = "checkpoint"          # the policy starts from ...
    c.model.path = "@sft"                # ... the SFT model of this pipeline

    c.grpo = g = ConfigDict()
    g.rewards = "world:1.0"              # name:weight,... (grpo_rewards.VERIFIABLE_REWARDS | reward_model)
    g.reward_model = "@reward"           # the frozen scalar-head model of the `reward_model` reward
    g.reference = "@sft"                 # frozen reference of the KL term (loaded when beta > 0)
    g.prompt_kinds = ""                  # keep only prompt records of these kinds ("" = all)
    g.num_generations = 8                # G: completions per prompt (a group)
    g.max_new_tokens = 32                # response budget per completion
    g.temperature = 1.0                  # sampling temperature of the rollout
    g.advantage_estimator = "grpo"       # grpo | dr_grpo | rloo (losses.grpo.ADVANTAGES)
    g.loss_type = "sequence_mean"        # sequence_mean | token_mean | constant (losses.grpo.AGGREGATIONS)
    g.importance_sampling_level = "token"  # token (GRPO) | sequence (GSPO)
    g.epsilon = 0.2                      # ε_low of the ratio clip
    g.epsilon_high = 0.0                 # ε_high (0 = ε_low; DAPO uses 0.28)
    g.beta = 0.0                         # KL coefficient to the reference (0 = no reference)
    g.kl_estimator = "k3"                # per-token KL: k1 | k2 | k3 (losses.KL_ESTIMATORS)
    g.num_iterations = 1                 # μ: passes over each rollout
    g.minibatch_size = 0                 # completions per optimizer step (0 = the whole rollout;
                                         # whole groups shuffled when G divides it)
    g.shared_prefix = True               # compute each prompt once for its G completions when
                                         # scoring and training (same values; dense models,
                                         # train.grad_accum 1, minibatches of whole groups)
    g.skip_zero_signal_groups = False    # drop groups whose rewards are all equal from the loss
    g.dynamic_sampling = False           # DAPO: sample more prompt batches until every group of
                                         # the update has signal (zero-signal groups skipped)
    g.max_sampling_rounds = 3            # dynamic sampling: rollout batches sampled at most
    g.sample_every = 10                  # log sample completions every N iterations (0 = never)
    g.num_samples = 4                    # completions per sample log

    c.train.steps = 100                  # GRPO iterations (rollout + update)
    c.train.batch_size = 16              # prompts per rollout (× num_generations completions)
    c.train.log_every = 1
    c.train.eval_every = 20              # greedy held-out reward every N iterations (and at 0, end)
    c.train.eval_batches = 2             # held-out prompt batches per evaluation
    c.train.checkpoint_every = 20
    c.optim.lr = 1e-6                    # RL moves a trained model: a small step
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    if preset == "tiny":
        # The built-in world, from configs/sft.py:tiny.
        c.train.steps = 30
        c.train.batch_size = 16
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
        c.grpo.num_generations = 8
        c.grpo.max_new_tokens = 16
        c.grpo.num_iterations = 2
        c.grpo.minibatch_size = 64
        # 1e-4 learns a fixed prompt batch's exact_match reward in 10 iterations (greedy
        # 0.19 → 0.69, tests/test_grpo.py); held-out exact match rises only from a longer SFT
        # and with more training problems (README's GRPO section: 0.484 → 0.562).
        c.optim.lr = 1e-4
        c.data.max_length = 48
    elif preset == "real":
        base.real(c, base.HH_HARMLESS, max_length=320)  # prompts keep their last 256 tokens
        c.grpo.rewards = "reward_model:1.0"
        c.grpo.beta = 0.04
        c.grpo.max_new_tokens = 64
        c.grpo.num_iterations = 1
        # Equal sampled tokens to PPO's real preset (50 iterations × 64 responses × 64 tokens),
        # for the ablation; two optimizer steps per rollout.
        c.grpo.minibatch_size = 32
        c.train.steps = 50
        c.train.batch_size = 8
        c.optim.lr = 5e-6
        base.mix_benign(c)
    elif preset:
        raise base.unknown_preset("configs/grpo.py", preset, ("tiny", "real"))
    return c
