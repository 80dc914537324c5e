"""`easyalign doctor`: the memory estimator on known shapes, mesh and coordinator checks, the CLI.

Parameter and optimizer sizes are exact (checked to the byte on Llama-3.2-1B); the activation
formula is checked term by term on the `tiny` preset, and as a whole against XLA's own memory
analysis of the compiled SFT step on CPU.
"""

from __future__ import annotations

import json
import re
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp
import pytest

from easyalign import doctor, doctor_models, sharding
from easyalign.cli import load_config
from easyalign.config_keys import ConfigError
from easyalign.model import create_model, preset

REPO = Path(__file__).resolve().parents[1]
LLAMA_1B = 1_235_814_400
ONE = {"data": 1, "fsdp": 1, "tensor": 1}
FSDP4_TP2 = {"data": 1, "fsdp": 4, "tensor": 2}


# A workdir that need not exist, under a directory anyone may write (the doctor runs the
# run's own checks, the workdir's among them).
SCRATCH = Path(tempfile.gettempdir()) / "easyalign-doctor-test"


def config(*flags: str):
    return load_config(["--config=configs/doctor.py:sft", f"--config.workdir={SCRATCH}/sft",
                        *flags])


# ----------------------------------------------------------------------------- exact sizes
def test_llama_1b_parameter_bytes_are_exact():
    model = preset("llama-3.2-1b", param_dtype="float32")
    whole = doctor.parameter_bytes(model, ONE)
    assert whole["count"] == LLAMA_1B == model.param_count()
    assert whole["total"] == whole["per_device"] == LLAMA_1B * 4
    # fsdp=4 × tensor=2: every matrix splits 8 ways; the RMSNorm scales (2 per layer + the
    # final one, 16 layers of width 2048) are replicated.
    norms = 16 * 2 * 2048 + 2048
    sharded = doctor.parameter_bytes(model, FSDP4_TP2)
    assert sharded["per_device"] == ((LLAMA_1B - norms) // 8 + norms) * 4
    assert sharded["layer_count"] == LLAMA_1B - 128256 * 2048 - 2048  # tied: embedding only
    bf16 = doctor.parameter_bytes(model.replace(param_dtype="bfloat16"), FSDP4_TP2)
    assert bf16["per_device"] * 2 == sharded["per_device"]


def test_optimizer_state_sizes():
    model = preset("llama-3.2-1b", param_dtype="float32")
    params = doctor.parameter_bytes(model, FSDP4_TP2)
    optim = config().optim
    # AdamW: μ and ν shaped (and sharded) like the params, plus two int32 step counters
    # (Adam's and the learning-rate schedule's), replicated.
    assert doctor.optimizer_bytes(optim, params) == 2 * params["per_device"] + 2 * 4
    optim.name = "sgd"  # momentum trace only
    assert doctor.optimizer_bytes(optim, params) == params["per_device"] + 4


def test_activation_formula_term_by_term():
    # tiny: d=64, F=128, H=4, K=2, hd=16, V=256, L=2; tensor=2, 3 rows of T=100 tokens.
    d, r, T, L = 64, 3, 100, 2
    x, proj, attn, rest = 64, 8 * 16 / 2 + 128 + 2 * 64, 4 * 16 / 2, 3 * 64 + 6 * 16 / 2 + 128
    scores = 8 * (4 / 2) * T * T  # fp32 scores + probabilities, per row and layer
    assert doctor.layer_elements(preset("tiny"), 2) == {"x": x, "proj": proj, "attn": attn,
                                                        "rest": rest}
    common = {"residual_grads": 2 * r * T * d * 4, "logits": 2 * r * T * 256 / 2 * 4}

    full = doctor.activation_bytes(preset("tiny", remat="full", dtype="bfloat16"), r, T, 2)
    assert full == pytest.approx({"layers": L * r * T * x * 2,
                                  "recompute": r * ((proj + attn + rest) * 2 * T + scores),
                                  **common})
    none = doctor.activation_bytes(preset("tiny", remat="none", dtype="float32"), r, T, 2)
    assert none == pytest.approx({
        "layers": L * r * ((x + proj + attn + rest) * 4 * T + scores), "recompute": 0, **common})
    save = doctor.activation_bytes(preset("tiny", remat="save_proj_attn", dtype="bfloat16",
                                          attention_impl="cudnn"), r, T, 2)
    assert save["layers"] == pytest.approx(L * r * T * (x + proj + attn) * 2)
    assert save["recompute"] == pytest.approx(r * (proj + attn + rest) * 2 * T)  # no T² term


def test_logits_memory_follows_logits_chunk_and_the_library_rule():
    """The logits term uses `model.logits_chunk` through `scoring.fit_chunk` (the losses' own
    rule), not a hard-coded 512: chunk 4096 at T = 4096 holds 8× the logits of chunk 512."""
    sizes = {}
    for chunk in (512, 4096):
        c = config("--config.data.max_length=4096", f"--config.model.logits_chunk={chunk}")
        model, _ = doctor_models.main_model(c)
        assert model.logits_chunk == chunk
        sizes[chunk] = doctor.activation_bytes(model, 1, 4096, 1)["logits"]
    assert sizes[4096] == pytest.approx(8 * sizes[512])


@pytest.mark.parametrize("remat", ["none", "full"])
def test_estimate_is_close_to_xlas_memory_analysis(remat):
    """Gradients + activations + logits vs the temporaries XLA allocates for the SFT step."""
    from flax import nnx

    from easyalign.algorithms.sft import make_loss
    from easyalign.train import optim, state as train_state
    from easyalign.train.step import make_train_step

    c = config(f"--config.model.remat={remat}", "--config.model.preset=world-teacher",
               "--config.model.vocab_size=1024", "--config.data.max_length=256",
               "--config.train.batch_size=8")
    model_config, _ = doctor_models.main_model(c)
    mesh = sharding.single_device_mesh()
    graphdef, params = nnx.split(create_model(model_config, mesh))
    tx, schedule = optim.make_optimizer(c.optim, 10)
    state = train_state.create_train_state(params, tx, 0, mesh)
    batch = {"tokens": jnp.zeros((8, 256), jnp.int32), "loss_mask": jnp.ones((8, 256))}
    with sharding.use_mesh(mesh):
        step = make_train_step(make_loss(graphdef, False), tx, schedule,
                               train_state.state_shardings(state))
        analysis = step.lower(state, batch, None).compile().memory_analysis()
    estimate = doctor.estimate(c, model_config, [], ONE)
    ours = estimate["gradients"] + estimate["activations"] + estimate["logits"]
    assert 0.67 < analysis.temp_size_in_bytes / ours < 1.5, (analysis.temp_size_in_bytes, ours)


# ----------------------------------------------------------------------------- checks
def test_mesh_resolution_and_its_messages():
    assert doctor.resolve_mesh(1, -1, 2, 8) == ({"data": 1, "fsdp": 4, "tensor": 2}, "")
    assert "8 devices are not divisible by 3" in doctor.resolve_mesh(1, -1, 3, 8)[1]
    assert "needs 4 devices, 8 are available" in doctor.resolve_mesh(2, 2, 1, 8)[1]
    assert "at most one axis may be -1" in doctor.resolve_mesh(-1, -1, 1, 8)[1]

    report = doctor.diagnose(config("--config.mesh.tensor=3", "--config.doctor.devices=8"))
    assert report["mesh"]["resolved"] is None and "memory" not in report
    assert any("not divisible by 3" in p for p in report["problems"])


def test_a_batch_the_mesh_cannot_split_is_a_problem():
    """The trial: 4 devices, mesh.data=2, train.batch_size=2 read "verdict: ready"; the run
    then stopped at once. The doctor runs the run's own checks, with the run's line."""
    report = doctor.diagnose(config("--config.doctor.devices=4", "--config.mesh.data=2",
                                    "--config.train.batch_size=2"))
    assert report["problems"] == [
        "config: train.batch_size=2 is not divisible by the 4 data-parallel devices (mesh "
        "data×fsdp = 2×2 of 4 devices): use a multiple of 4"], report["problems"]
    assert doctor.format_report(report).splitlines()[-1] == "verdict: 1 problem(s)"


def test_verdicts_for_an_8b_model():
    plan = ["--config.model.preset=llama-3.1-8b", "--config.model.vocab_size=128256",
            "--config.model.dtype=bfloat16", "--config.model.remat=full",
            "--config.data.max_length=2048", "--config.train.batch_size=8"]
    small = doctor.diagnose(config(*plan, "--config.doctor.devices=1",
                                   "--config.doctor.device_memory_gib=80"))
    memory = small["memory"]
    assert memory["per_device"]["params"] == pytest.approx(8_030_261_248 * 4, rel=1e-9)
    over = (memory["total"] - 80 * doctor.GiB) / doctor.GiB
    assert memory["verdict"] == f"does not fit (by {over:.2f} GiB)" and over > 0
    assert small["problems"] == [f"memory: {memory['verdict']}"]

    big = doctor.diagnose(config(*plan, "--config.doctor.devices=8",
                                 "--config.doctor.device_memory_gib=80"))
    assert big["mesh"]["resolved"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert big["memory"]["verdict"].startswith("fits") and not big["problems"]
    assert big["memory"]["per_device"]["optimizer"] == pytest.approx(
        2 * big["memory"]["per_device"]["params"], rel=1e-6)


def test_dpo_live_reference_and_generate_are_sized(tmp_path):
    base = ["--config.model.init=scratch", "--config.model.vocab_size=1024",
            "--config.doctor.devices=1"]
    live = doctor.diagnose(load_config(["--config=configs/doctor.py:dpo", *base,
                                        "--config.dpo.reference=live",
                                        "--config.model.dtype=bfloat16"]))
    assert live["extra_models"][0]["role"] == "reference"
    # Reported: on the CPU a real SFT peaked 37% above its plan; the report says so there.
    assert any(n.startswith("memory on the CPU") for n in live["notes"])
    # The copy is held in the compute dtype: float32 master weights, bfloat16 compute → half.
    assert (live["model"]["param_dtype"], live["model"]["dtype"]) == ("float32", "bfloat16")
    assert live["memory"]["per_device"]["frozen_models"] == pytest.approx(
        live["memory"]["per_device"]["params"] / 2, rel=1e-6)

    model = create_model(preset("world-student", vocab_size=1024))
    from easyalign.hf import save_checkpoint_model

    save_checkpoint_model(model, tmp_path / "m")
    gen = doctor.diagnose(load_config(["--config=configs/doctor.py:generate",
                                       f"--config.generate.model={tmp_path / 'm'}",
                                       "--config.generate.batch_size=4",
                                       "--config.generate.max_new_tokens=16"]))
    assert gen["model"]["params"] == model.config.param_count()
    # K and V: 2 layers × 4 rows × (512 + 16) positions × 2 kv heads × 16 dims in bfloat16.
    assert gen["memory"]["per_device"]["kv_cache"] == 2 * 2 * 4 * 528 * 2 * 16 * 2


def test_grpo_is_sized_with_its_frozen_models_rollout_cache_and_minibatch():
    """GRPO with β > 0 and a reward-model reward: the reference and the reward model are frozen
    extras (their @stages not run here: planned from their configs), the sampler's KV cache
    holds batch · G rows of data.max_length positions, and the update trains on the whole
    rollout unless grpo.minibatch_size cuts it."""
    base = ["--config=configs/doctor.py:grpo", f"--config.workdir={SCRATCH}/grpo",
            "--config.model.init=scratch", "--config.model.vocab_size=1024",
            "--config.doctor.devices=1", "--config.grpo.beta=0.04",
            "--config.grpo.rewards=world:1.0,reward_model:0.5", "--config.train.batch_size=4",
            "--config.grpo.num_generations=8", "--config.data.max_length=96",
            "--config.model.dtype=bfloat16", "--config.model.param_dtype=float32"]
    whole = doctor.diagnose(load_config(base))
    assert [x["role"] for x in whole["extra_models"]] == ["reference", "reward model"]
    memory = whole["memory"]["per_device"]
    # The two frozen models are held in bfloat16, 2 bytes per parameter (the policy in float32).
    assert memory["frozen_models"] == 2 * sum(x["params"] for x in whole["extra_models"])
    assert memory["params"] == 4 * whole["model"]["params"]
    m = preset("world-teacher", vocab_size=1024)
    itemsize = jnp.dtype(whole["model"]["dtype"]).itemsize
    # K and V: layers × (4 prompts × 8 completions) rows × 96 positions × kv heads × head dim.
    assert memory["kv_cache"] == 2 * m.num_layers * 32 * 96 * m.num_kv_heads * m.head_dim * itemsize
    quarter = doctor.diagnose(load_config(base + ["--config.grpo.minibatch_size=8"]))
    # 32 completions per step → 8: every per-sequence activation term shrinks 4×.
    assert quarter["memory"]["per_device"]["activations"] == pytest.approx(
        memory["activations"] / 4, rel=0.05)
    no_reference = doctor.diagnose(load_config(base + ["--config.grpo.beta=0.0"]))
    assert [x["role"] for x in no_reference["extra_models"]] == ["reward model"]
    # The trunk's positions: 32 rows of P + R = 96, or with the shared prefix 4 streams of
    # P + G·R = 64 + 8 · 32 (grpo.max_new_tokens 32); the head: 32 × 32 response positions.
    rows = doctor.diagnose(load_config(base + ["--config.grpo.shared_prefix=False"]))
    model = preset("world-teacher", vocab_size=1024, dtype=whole["model"]["dtype"],
                   attention_impl=whole["model"]["attention_impl"])

    def trunk(n, length):
        act = doctor.activation_bytes(model, n, length, 1)
        return act["layers"] + act["recompute"] + act["residual_grads"]

    assert rows["memory"]["per_device"]["activations"] == trunk(32, 96)
    assert memory["activations"] == trunk(4, 64 + 8 * 32)
    assert memory["logits"] == doctor.activation_bytes(model, 32, 32, 1)["logits"]


def test_a_pipeline_stage_not_run_yet_is_planned_from_its_own_config(tmp_path):
    """On a fresh checkout `doctor.py:grpo:tiny` sizes the policy `@sft` names before the SFT
    stage has run: the model `configs/sft.py:tiny` would train (the world-teacher preset), not
    an error; a stage that has run is read from its model instead."""
    base = ["--config=configs/doctor.py:grpo:tiny", f"--config.workdir={tmp_path / 'grpo'}",
            "--config.doctor.devices=1"]
    report = doctor.diagnose(load_config(base))
    assert report["problems"] == [], report["problems"]
    # ... and says the run needs it first, as the run itself would (the trial: a standalone
    # LoRA run whose grpo.reference was left '@sft' read "verdict: ready", then stopped).
    assert [n.split(":")[0] for n in report["needs"]] == ["model.path='@sft'"]
    assert "run the sft stage first" in report["needs"][0]
    assert doctor.format_report(report).splitlines()[-1] == (
        "verdict: ready once the stages it reads have run (needs first, above)")
    sft_model = doctor_models.main_model(load_config(["--config=configs/sft.py:tiny"]))[0]
    assert sft_model.num_layers == preset("world-teacher", vocab_size=1).num_layers
    assert report["model"]["params"] == sft_model.param_count()
    assert report["model"]["source"].startswith(
        "@sft, not run yet: planned from configs/sft.py:tiny (preset world-teacher")
    # Once the stage has run, its own model decides (here one of another shape).
    model = create_model(preset("world-student", vocab_size=1024))
    from easyalign.hf import save_checkpoint_model

    save_checkpoint_model(model, tmp_path / "sft" / "model")
    report = doctor.diagnose(load_config(base))
    assert report["model"]["params"] == model.config.param_count() != sft_model.param_count()
    assert report["model"]["source"] == "checkpoint @sft"
    typo = load_config(base)
    with typo.unlocked():
        typo.grpo.num_generation = 4  # as a user's config file with a typo sets it
    with pytest.raises(ConfigError, match="config key grpo.num_generation does not exist"):
        doctor.run(typo)


def test_a_student_derived_from_a_stage_not_run_yet_is_planned_derived(tmp_path):
    """`doctor.py:distill:real` on a fresh checkout planned the student (`init=derive` from
    `@dpo`) as the whole 30-layer teacher: the derive was applied to a teacher read from disk
    only, not to one planned from its stage's config. Planned, the student has the kept layers
    and MLP width, and the size it has once the teacher exists."""
    base = ["--config=configs/doctor.py:distill:tiny", f"--config.workdir={tmp_path / 'distill'}",
            "--config.doctor.devices=1", "--config.model.init=derive",
            "--config.model.path=@dpo", "--config.model.layers=spread:2",
            "--config.model.intermediate_size=192"]
    planned = doctor.diagnose(load_config(base))
    assert planned["model"]["source"].startswith("@dpo, not run yet: planned from configs/dpo.py")
    assert planned["model"]["layers"] == 2, planned["model"]
    # The teacher DPO would train (world-teacher: 4 layers, MLP 384), saved as if it had run.
    teacher = create_model(preset("world-teacher", vocab_size=planned["model"]["vocab"]))
    from easyalign.hf import save_checkpoint_model

    save_checkpoint_model(teacher, tmp_path / "dpo" / "model")
    stored = doctor.diagnose(load_config(base))
    assert stored["model"]["source"] == "derive @dpo"
    assert stored["model"]["params"] == planned["model"]["params"] < teacher.config.param_count()
    assert planned["extra_models"][0]["params"] == teacher.config.param_count()


def test_coordinator_check():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert doctor.coordinator(f"127.0.0.1:{port}", False, 2)["detail"].endswith(
            "accepts connections")
        taken = doctor.coordinator(f"127.0.0.1:{port}", True, 2)  # process 0 cannot bind it
        assert not taken["ok"] and f"cannot bind port {port}" in taken["detail"]
    refused = doctor.coordinator(f"127.0.0.1:{port}", False, 2)
    assert refused["ok"] and "nothing listens" in refused["detail"]
    assert doctor.coordinator(f"127.0.0.1:{port}", True, 2)["ok"]
    unknown = doctor.coordinator("coordinator.invalid:1234", False, 0.5)  # RFC 6761: never resolves
    assert not unknown["ok"] and "cannot reach coordinator.invalid:1234" in unknown["detail"]
    assert not doctor.coordinator("no-port", False, 0.5)["ok"]


def test_devices_follow_jax_rules_for_slurm(monkeypatch):
    monkeypatch.setenv("JAX_LOCAL_DEVICE_IDS", "0,1,2")
    assert doctor._visible_count(8, "gpu") == 3
    monkeypatch.delenv("JAX_LOCAL_DEVICE_IDS")
    for var in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_LOCALID"):
        monkeypatch.setenv(var, "1")
    assert doctor._visible_count(8, "gpu") == 1  # JAX keeps GPU SLURM_LOCALID only
    assert doctor._visible_count(8, "cpu") == 8


# ----------------------------------------------------------------------------- command line
def test_cli_exit_status_and_json_line(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    bad = subprocess.run([sys.executable, "-m", "easyalign", "doctor",
                          "--config=configs/sft.py:tiny", "--config.mesh.tensor=3"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stderr[-2000:]
    report = json.loads(bad.stdout.splitlines()[-1])
    assert "PROBLEM: mesh" in bad.stdout and report["problems"]

    doctor.run(config("--config.model.vocab_size=1024",
                      f"--config.doctor.json={tmp_path / 'r.json'}"))
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["memory"]["verdict"].startswith("fits") and report["problems"] == []


def test_two_processes_through_the_launcher(tmp_path):
    env = dict(os.environ, NPROC="2", CPU_DEVICES="2", PORT=str(_free_port()),
               LOG_DIR=str(tmp_path), PYTHON=sys.executable)
    subprocess.run([str(REPO / "scripts" / "launch_multihost.sh"), "doctor",
                    "--config=configs/sft.py:tiny", "--config.model.vocab_size=1024"],
                   cwd=REPO, env=env, check=True, timeout=180, capture_output=True)
    reports = [json.loads((tmp_path / f"process_{i}.log").read_text().splitlines()[-1])
               for i in range(2)]
    for i, report in enumerate(reports):
        assert report["processes"]["count"] == 2 and report["processes"]["index"] == i
        assert report["devices"]["total"] == 4
        assert report["mesh"]["resolved"] == {"data": 1, "fsdp": 4, "tensor": 1}
        assert report["coordinator"]["ok"]
    assert "free for process 0" in reports[0]["coordinator"]["detail"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_mesh_that_cannot_split_a_weight_is_a_problem_and_stops_the_run_first():
    """SmolLM2's head counts (9 heads, 3 KV heads) on mesh.tensor=2: jax places only equal
    shards, so the run died placing `k_proj` after loading its data, while the doctor said
    "ready". The doctor reports it as a problem, and `init_model`'s check stops the run with one
    line before any weight is read; tensor=3 divides every axis."""
    from easyalign.hf.models import check_mesh

    model = preset("tiny", vocab_size=96, num_heads=9, num_kv_heads=3, head_dim=16,
                   intermediate_size=192)
    two = {"data": 1, "fsdp": 1, "tensor": 2}
    assert doctor_models.uneven_weights(model, two) == (
        "layers.attn.k_proj.kernel axis 2 (size 3) over tensor = 2 devices")
    assert doctor_models.uneven_weights(model, {"data": 1, "fsdp": 1, "tensor": 3}) is None
    assert doctor_models.uneven_weights(model, {"data": 2, "fsdp": 1, "tensor": 1}) is None
    with pytest.raises(ConfigError, match=re.escape(
            "mesh data=1 fsdp=1 tensor=2 cannot split the model's weights evenly (layers.attn."
            "k_proj.kernel axis 2 (size 3) over tensor = 2 devices): mesh.tensor must divide "
            "num_heads=9, num_kv_heads=3")):
        check_mesh(model, two)
    report = doctor.diagnose(config("--config.model.vocab_size=1024", "--config.mesh.tensor=2",
                                    "--config.doctor.devices=2",
                                    "--config.model.overrides=num_heads=9,num_kv_heads=3,"
                                    "head_dim=16"))
    assert any(p.startswith("mesh: layers.attn.k_proj.kernel axis 2 (size 3) over tensor = 2")
               for p in report["problems"]), report["problems"]
