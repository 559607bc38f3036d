"""Your own Keras model, trained with SGLR on numpy arrays, then evaluated with
AutoAttack: the shortest path through the library.

    python examples/own_model_sglr.py            # digits, 30 epochs, a few minutes on a CPU
    python examples/own_model_sglr.py --tiny     # seconds: what the test suite runs
"""

import argparse

import keras

import sglr_keras as sk


def main(tiny: bool) -> sk.EvaluationReport:
    keras.utils.set_random_seed(0)
    bundle = sk.load_dataset("digits", train_subset=200 if tiny else None)
    x, y = bundle.x_train / 255.0, bundle.y_train

    model = keras.Sequential([
        keras.Input(x.shape[1:]),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(bundle.num_classes),  # logits
    ])
    epochs = 2 if tiny else 30
    trainer = sk.AdversarialTrainer(
        model,
        attack=sk.TrainingPGD(eps=0.1, step_size=0.025, steps=2 if tiny else 10),
        # The table refines labels from the 5th epoch on (warm-up 4), the authors' code's settings otherwise.
        objective=sk.SGLR.from_preset("reference-code", bundle.num_classes, y, warmup_epochs=1 if tiny else 4),
        weight_decay=5e-4,
    )
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    trainer.fit(x, y, batch_size=64, epochs=epochs, verbose=0 if tiny else "auto")

    x_test, y_test = bundle.test_subset(40 if tiny else 300)
    attacks = ["pgd", sk.APGD(eps=0.1, n_iter=10)] if tiny else ["pgd", "cw", "autoattack"]
    report = sk.evaluate(model, x_test, y_test, attacks=attacks, eps=0.1)
    print(report.table())
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few seconds on tiny data (the test suite's run)")
    main(parser.parse_args().tiny)
