"""``model.trust_remote_code`` reaches every loader, and a checkpoint keeps the recipe's chat template.

The model here is the tiny random Llama re-declared by its own Python files (``auto_map``), the way a
hub model with custom code ships: transformers runs that code only when asked to."""

import json
import shutil
from pathlib import Path

import pytest

from distill.teachers import Teacher, TeacherPool
from posttrain.core.checkpoints import merged_model, saved_checkpoint
from posttrain.core.driver import engine_config
from posttrain.core.models import load_tokenizer
from posttrain.core.policy import PolicyTrainer
from posttrain.core.schema import LoraConfig, ModelConfig, TrainerConfig
from posttrain.recipe import load_recipe

CONFIG_CODE = '''
from transformers import LlamaConfig


class CodedConfig(LlamaConfig):
    model_type = "coded_llama"
'''
MODEL_CODE = '''
from transformers import LlamaForCausalLM

from .configuration_coded import CodedConfig


class CodedForCausalLM(LlamaForCausalLM):
    config_class = CodedConfig
'''


@pytest.fixture
def coded_model(tmp_path, tiny_model_path) -> Path:
    model = tmp_path / "coded"
    shutil.copytree(tiny_model_path, model)
    (model / "configuration_coded.py").write_text(CONFIG_CODE)
    (model / "modeling_coded.py").write_text(MODEL_CODE)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="coded_llama", architectures=["CodedForCausalLM"], auto_map={
        "AutoConfig": "configuration_coded.CodedConfig", "AutoModelForCausalLM": "modeling_coded.CodedForCausalLM"})
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_trainer_runs_model_code_only_when_trusted(coded_model):
    cfg = TrainerConfig(micro_batch_size=2, autocast="none")
    with pytest.raises(ValueError, match="trust_remote_code"):
        PolicyTrainer(str(coded_model), cfg)
    trainer = PolicyTrainer(str(coded_model), cfg, trust_remote_code=True)
    assert type(trainer.model).__name__ == "CodedForCausalLM"


def test_engine_config_carries_the_flag(coded_model):
    recipe = load_recipe("recipes/quickstart.yaml", [f"model.path={coded_model}", "model.trust_remote_code=true"])
    assert engine_config(recipe, str(coded_model)).trust_remote_code is True
    plain = load_recipe("recipes/quickstart.yaml", [])
    assert engine_config(plain, "m").trust_remote_code is False


def test_checkpoint_keeps_the_recipe_chat_template(tmp_path, tiny_model_path):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"
    tokenizer = load_tokenizer(tiny_model_path, ModelConfig(path=tiny_model_path, chat_template=template))
    trainer = PolicyTrainer(tiny_model_path, TrainerConfig(micro_batch_size=2, autocast="none"))
    saved = Path(trainer.save(str(tmp_path / "step_1"), tokenizer=tokenizer))
    reloaded = load_tokenizer(str(saved))
    assert reloaded.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "[user] hi\n[assistant]"


def test_teachers_and_export_run_model_code_only_when_trusted(tmp_path, coded_model):
    trainer = PolicyTrainer(str(coded_model), TrainerConfig(micro_batch_size=2, autocast="none", lora=LoraConfig(r=4, alpha=8)),
                            trust_remote_code=True)
    checkpoint = trainer.save(str(tmp_path / "step_1"), tokenizer=load_tokenizer(str(coded_model)))
    with pytest.raises(ValueError, match="trust_remote_code"):
        merged_model(saved_checkpoint(checkpoint), "float32")
    assert type(merged_model(saved_checkpoint(checkpoint, trust_remote_code=True), "float32")).__name__ == "CodedForCausalLM"
    teacher = Teacher("math", "high", str(coded_model), None)
    with pytest.raises(ValueError, match="trust_remote_code"):
        TeacherPool([teacher], threads=1)
    TeacherPool([teacher], threads=1, trust_remote_code=True)
