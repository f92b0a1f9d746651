"""Fine-tuning methods, as peft does it: one config dataclass and one `register_method` call each.

registry.py   MethodConfig (what every method has), MethodSpec, register_method, spec(cfg), the pre-load checks
builtin.py    full, head, bitfit, freeze: which of the model's own weights train
adapters.py   lora, qlora, adalora, ia3, prompt_tuning: peft adapters on a frozen base

Adding a method: a MethodConfig subclass holding its defaults, an apply function (model, cfg, total_steps) ->
model, and `register_method("name", TheConfig, apply, ...)` with what the rest of ftsweep must know (peft=True,
no_checkpoint=..., cuda_only=..., extra_positions=..., run_name_part=...). `method=name` then composes, validates
and trains; a conf/method/name.yaml is optional (documentation, and `defaults: [base_name]`).
"""

# isort: off
# Registration order is the order `method=` choices and error messages list them: the model's own weights
# first, then the adapters.
from ftsweep.methods.builtin import (  # noqa: F401
    BitFitMethodConfig,
    FreezeMethodConfig,
    FullMethodConfig,
    HeadMethodConfig,
    train_only,
)
from ftsweep.methods.adapters import (  # noqa: F401
    ATTENTION_QV,
    AdaLoraMethodConfig,
    IA3MethodConfig,
    LoraMethodConfig,
    PromptTuningMethodConfig,
    QLoraMethodConfig,
)

# isort: on
from ftsweep.methods.registry import (  # noqa: F401
    HEAD_MODULES,
    SPECS,
    MethodConfig,
    MethodSpec,
    check,
    check_checkpointing,
    register_method,
    spec,
)
