"""Masked-image pre-training: SimMIM (what `objective: masked-image` runs) against MAE at the same compute,
on pipelines/digits.yaml's data and model size, judged by what pre-training is for: features a linear probe
can read.

    flock /tmp/lifecycle-heavy.lock python benchmarks/masked_image.py --quick   # about a minute on 2 cores

Both pre-train the same encoder (ViT, 4 layers, hidden 64, 2x2 patches: 16 per 8x8 digit) for the same
epochs, batch and learning rate as digits.yaml's pretrain stage, on its training images with its
augmentation (labels unused):
- SimMIM: transformers' ViTForMaskedImageModeling as lifecycle.workloads.images.masked trains it (mask token on 50%
  of the patches, the encoder sees all 16, L1 on the masked pixels);
- MAE: ViTMAEForPreTraining with a one-layer decoder of the same width, at its usual 75% mask ratio and at
  SimMIM's 50% (on 16 patches, 75% leaves the encoder 4 tokens to see).
Each encoder is then frozen and probed (logistic regression on the mean patch state, lifecycle.workloads.images.masked
.linear_probe: fit on train, scored on validation; MAE encodes every patch for the probe, mask ratio 0), with
the wall time of pre-training beside it. The baseline is the same encoder untrained (random init, seed 0):
pre-training is worth something only where its probe beats that one. Seeds: 0 for every initialisation,
mask and augmentation. Checks, all on validation (the test split is not read):
- pre-trained probe > untrained probe, for SimMIM and for the best MAE variant;
- SimMIM, the objective the library ships, probes at least as well as the best MAE variant: vacuous unless
  both pre-trained probes beat the untrained one (ranking two objectives that both hurt says nothing).
Writes benchmarks/results/masked_image.json.
"""

from __future__ import annotations

import argparse
import sys
import time

from common import ROOT, SMOKE, Recorder, check  # first: it sets the offline environment


def pretrain(model, dataset, train, work) -> float:
    """Trains `model` on `dataset` with the train config `train`; returns the wall seconds."""
    from transformers import Trainer

    from lifecycle.components.training import training_args

    args = training_args(train, work, 0, eval_strategy="no", save_strategy="no", remove_unused_columns=False)
    started = time.perf_counter()
    Trainer(model=model, args=args, train_dataset=dataset).train()
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 epochs instead of digits.yaml's 30")
    args = ap.parse_args()
    import tempfile
    from pathlib import Path

    import torch
    from transformers import ViTForMaskedImageModeling, ViTMAEConfig, ViTMAEForPreTraining

    from lifecycle import config, data
    from lifecycle.workloads.images.masked import MaskedImages, linear_probe, patches
    from lifecycle.workloads.images.model import Images, vit_config

    torch.set_num_threads(2)
    recorder = Recorder("masked_image", args.quick)
    pipe = config.load(ROOT / "pipelines" / "digits.yaml")
    stage = pipe.stage("pretrain")
    digits = data.load(pipe.data[stage.data], pipe)
    epochs = 1 if SMOKE else 10 if args.quick else stage.train.epochs
    settings = stage.train.model_copy(update={"epochs": epochs})  # digits.yaml's batch, lr and warm-up
    vit = vit_config(digits.preprocessing, stage.model)
    train = digits.splits["train"].images
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        simmim = ViTForMaskedImageModeling(vit)
        rows["random init"] = {"probe_accuracy": linear_probe(simmim.vit, digits), "seconds": 0.0}
        masked = MaskedImages(train, digits.preprocessing, digits.spec.augment, stage.mlm_probability, patches(vit), 0)
        seconds = pretrain(simmim, masked, settings, Path(tmp) / "simmim")
        rows[f"SimMIM, mask {stage.mlm_probability:.0%}"] = {"probe_accuracy": linear_probe(simmim.vit, digits),
                                                             "seconds": seconds}
        for ratio in (0.75, stage.mlm_probability):
            torch.manual_seed(0)
            mae = ViTMAEForPreTraining(ViTMAEConfig(
                image_size=vit.image_size, patch_size=vit.patch_size, num_channels=vit.num_channels,
                hidden_size=vit.hidden_size, num_hidden_layers=vit.num_hidden_layers,
                num_attention_heads=vit.num_attention_heads, intermediate_size=vit.intermediate_size,
                decoder_hidden_size=vit.hidden_size, decoder_num_hidden_layers=1,
                decoder_num_attention_heads=vit.num_attention_heads, decoder_intermediate_size=vit.intermediate_size,
                mask_ratio=ratio))
            seconds = pretrain(mae, Images(train, None, digits.preprocessing, digits.spec.augment, 0), settings,
                               Path(tmp) / f"mae{ratio}")
            mae.vit.config.mask_ratio = 0.0  # the probe sees every patch
            rows[f"MAE, mask {ratio:.0%}"] = {"probe_accuracy": linear_probe(mae.vit, digits), "seconds": seconds}
    for name, row in rows.items():
        print(f"{name:16s} probe accuracy (validation) {row['probe_accuracy']:.4f}   pre-training {row['seconds']:.1f} s")
    untrained = rows["random init"]["probe_accuracy"]
    simmim_acc = rows[f"SimMIM, mask {stage.mlm_probability:.0%}"]["probe_accuracy"]
    best_mae = max(v["probe_accuracy"] for k, v in rows.items() if k.startswith("MAE"))
    checks = [check(f"pre-trained probe > untrained probe ({name}, validation)", acc - untrained, "> 0", acc > untrained)
              for name, acc in (("SimMIM", simmim_acc), ("best MAE", best_mae))]
    checks.append(check(f"SimMIM - best MAE linear-probe accuracy (validation, {epochs} epochs each)", simmim_acc - best_mae,
                        ">= 0 (both beat the untrained probe)", simmim_acc >= best_mae,
                        premise=all(c["status"] == "pass" for c in checks)))
    path = recorder.save({"epochs": epochs, "rows": rows}, checks)
    return recorder.report(checks, path)


if __name__ == "__main__":
    sys.exit(main())
