"""Benchmark: why bench/qas.py's int8 SGD-M row without QAS scored the same on all three seeds.

    python bench/qas_seeds.py [--seeds 0 1 ... 9]   ->  bench/results/qas_seeds.json (~10 min)

What is measured. The row exactly as `bench/qas.py` runs it (MCUNet-5FPS int8, the 49 KB
scheme, momentum 0.9, no QAS, the learning rate its validation grid chose, 2 passes over the
same training split, the Relax VM step), one compiled program re-initialised per seed (new
head, new sample order, fresh momenta). Per seed: correct predictions on the test and the
validation split, the test predictions themselves, and the mean loss of the last 100 steps;
per pair of seeds: on how many test images the predictions differ, and how many each gets
right that the other gets wrong. Equal counts from models that disagree on many images, with
validation counts that differ, mean the equality is a coincidence of the counts, not one
model evaluated several times (a stale or shared state would make the predictions equal).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np

import qas

LR = 3000.0  # the row's rate in bench/results/qas.json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--out", default=str(qas.RESULTS / "qas_seeds.json"))
    args = parser.parse_args()
    from tvm_tinytrain.config import SparseUpdateConfig
    from tvm_tinytrain.pipeline import TrainOptions, build_training_program

    t0 = time.time()
    splits = qas.split_data(*qas.digits_int8())
    model = qas.models_dir() / qas.MODEL_FILE
    program = build_training_program(qas.import_graph(model, "int8", args.seeds[0]),
                                     SparseUpdateConfig.scheme(qas.SCHEME),
                                     TrainOptions(lr=LR, momentum=0.9, qas=False, int8_update=qas.INT8_UPDATE))
    trainer = qas.make_trainer_class()(program)
    runs, preds = [], {}
    for seed in args.seeds:
        trainer.reset(qas.import_graph(model, "int8", seed).params)
        result = qas.train(trainer, splits["train"], seed, qas.EPOCHS, None)
        counts = {}
        for split in ("test", "val"):
            x, y = splits[split]
            p = np.array([int(np.argmax(trainer.predict(qas.as_input(img)))) for img in x])
            counts[split] = int((p == y).sum())
            if split == "test":
                preds[seed] = p
        runs.append({"seed": seed, "test_correct": counts["test"], "val_correct": counts["val"],
                     "train_loss_last": result["train_loss_last"]})
        qas.log(f"seed {seed}: test {counts['test']} / {len(splits['test'][1])}, val {counts['val']} / "
                f"{len(splits['val'][1])}, loss {result['train_loss_last']:.4f}")
    y = splits["test"][1]
    pairs = [{"seeds": [a, b], "predictions_differ": int((preds[a] != preds[b]).sum()),
              "right_only_first": int(((preds[a] == y) & (preds[b] != y)).sum()),
              "right_only_second": int(((preds[a] != y) & (preds[b] == y)).sum())}
             for a, b in itertools.combinations(args.seeds, 2)]
    report = {"what": __doc__.split("What is measured. ")[1].strip(), "lr": LR,
              "test_images": len(y), "val_images": len(splits["val"][1]), "runs": runs, "pairs": pairs,
              "seconds": round(time.time() - t0)}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({"runs": runs, "pairs": pairs[:3]}))


if __name__ == "__main__":
    main()
