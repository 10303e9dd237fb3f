"""The console of a training stage: one progress bar with loss and validation metrics in it, no log
dicts printed between bar fragments, no second bar per evaluation (a real Trainer on a tiny BERT)."""

from __future__ import annotations

from test_hardening_config import tiny_classifier_and_data


def tiny_trainer(out, with_callback_swap: bool):
    from transformers import Trainer

    from lifecycle.components.training import TrainConfig, one_progress_bar, training_args

    model, data = tiny_classifier_and_data()
    cfg = TrainConfig(max_steps=6, batch_size=4, lr=1e-3, logging_steps=2, eval_steps=3, save_steps=100)
    trainer = Trainer(model=model, args=training_args(cfg, out, seed=0), train_dataset=data, eval_dataset=data)
    if with_callback_swap:
        one_progress_bar(trainer, "finetune")
    return trainer


def test_one_bar_with_loss_and_validation_metrics(tmp_path, capsys):
    tiny_trainer(tmp_path / "plain", with_callback_swap=False).train()
    plain = capsys.readouterr()
    assert "{'loss'" in plain.out + plain.err  # what the Trainer prints on its own: the test can fail

    tiny_trainer(tmp_path / "ours", with_callback_swap=True).train()
    err = capsys.readouterr()
    console = err.out + err.err
    assert "{'loss'" not in console and "'eval_loss'" not in console
    final = console.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("finetune: 100%") and "6/6" in final
    assert "loss=" in final and "val_loss=" in final, final
    # evaluation opened no bar of its own: every bar line is the stage's
    bars = [line for line in console.replace("\r", "\n").splitlines() if "%|" in line]
    assert bars and all(line.startswith("finetune:") for line in bars), bars
