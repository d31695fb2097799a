"""Checkpoints are whole or absent; a trainer restored from one is the trainer that saved it."""

import json

import torch

from posttrain.core.policy import PolicyTrainer, Sequences
from posttrain.core.schema import LoraConfig, TrainerConfig
from posttrain.core.rundir import RunDir
from specialists.sft import SftLoss


def _seqs() -> Sequences:
    return Sequences([[1, 2, 3], [4, 5]], [[6, 7, 8, 9], [10, 11]])


def _step(trainer: PolicyTrainer) -> None:
    seqs = _seqs()
    trainer.update(seqs, SftLoss(sum(map(len, seqs.completion_ids))), {})


def test_save_then_load_restores_weights_and_optimizer(tmp_path, tiny_model_path):
    for lora in (None, LoraConfig(r=4, alpha=8)):
        cfg = TrainerConfig(lr=1e-2, lora=lora, autocast="none")
        trained = PolicyTrainer(tiny_model_path, cfg, threads=1)
        _step(trained)
        path = trained.save(str(tmp_path / f"step_1_{lora is not None}"))
        restored = PolicyTrainer(tiny_model_path, cfg, threads=1)
        assert restored.load(path) == 1
        for one, two in ((trained, restored),):
            _step(one), _step(two)  # the same next step from the same state: Adam moments restored too
        for (name, a), (_, b) in zip(trained.model.named_parameters(), restored.model.named_parameters()):
            torch.testing.assert_close(a, b, msg=name)


def test_only_complete_checkpoints_count_and_rewind_drops_later_steps(tmp_path):
    run = RunDir(tmp_path, "r")
    for step in (1, 2):
        run.checkpoint_dir(step).mkdir(parents=True)
        (run.checkpoint_dir(step) / "trainer_state.pt").write_bytes(b"x")
    (run.path / "checkpoints" / "step_3.partial").mkdir()  # a save that never finished
    run.checkpoint_dir(4).mkdir()  # no trainer state: not whole
    assert run.latest_checkpoint() == (2, run.checkpoint_dir(2))
    for step in range(4):
        run.log_metrics(step, {"x": step})
    run.rewind(2)
    assert [json.loads(line)["step"] for line in (run.path / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    run.close()
