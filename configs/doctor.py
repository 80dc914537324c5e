"""Doctor: a phase's config plus the planning options of `easyalign doctor`.

`easyalign doctor` accepts the run's own config (`--config=configs/sft.py:tiny`). This file wraps
one to add a `doctor` block, for planning a run on other hardware or writing the report as JSON:

    easyalign doctor --config=configs/doctor.py:sft --config.model.preset=llama-3.1-8b \
        --config.doctor.devices=8 --config.doctor.device_memory_gib=80 \
        --config.model.remat=full --config.mesh.fsdp=8

The argument is `PHASE[:PRESET]`, PHASE a config module of this folder (`sft`, `dpo`,
`teacher_data`, ...), PRESET its preset.
"""

import importlib

from ml_collections import ConfigDict


def get_config(arg: str = "sft"):
    phase, _, preset = arg.partition(":")
    try:
        module = importlib.import_module(f"configs.{phase}")
    except ModuleNotFoundError:
        raise ValueError(f"configs/doctor.py: no phase config configs/{phase}.py "
                         "(use configs/doctor.py:PHASE[:PRESET])") from None
    c = module.get_config(preset)
    c.doctor = d = ConfigDict()
    d.devices = 0                        # devices per process to plan for (0 = this machine's)
    d.device_memory_gib = 0.0            # memory per device to plan for (0 = as reported)
    d.json = ""                          # write the report here as JSON ("" = print a JSON line)
    d.timeout_s = 5.0                    # TCP connect timeout of the coordinator check
    return c
