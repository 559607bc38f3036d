"""``sglr train``."""

import json

import click

from sglr_keras.cli.main import console, results_console, sglr, user_errors


@sglr.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file (see configs/).")
@click.option("--dataset", help="cifar10, cifar100, svhn, fashion_mnist, mnist, digits, synthetic or npz:PATH.")
@click.option("--data-dir", help="Local data: a CIFAR python folder, idx files, or a TFDS data dir.")
@click.option("--arch", help="resnet18, resnet34, resnet50, preact_resnet18, wrn34_10, wrn28_10, small_cnn.")
@click.option("--method", help="standard, pgd-at, sglr, trades, trades-sglr or label-smoothing.")
@click.option("--epochs", type=int, help="Number of epochs.")
@click.option("--batch-size", type=int, help="Global batch size.")
@click.option("--lr", type=float, help="Initial learning rate.")
@click.option("--train-subset", type=int, help="Train on a seeded, class-balanced subset of N examples.")
@click.option("--label-noise", type=float, help="Symmetric label noise rate in [0, 1).")
@click.option("--eps", help="Training L-inf radius, e.g. 8/255.")
@click.option("--sglr-preset", type=click.Choice(["paper", "reference-code"]), help="Named SGLR hyperparameters.")
@click.option("--strategy", type=click.Choice(["auto", "default", "mirrored", "multi-worker"]),
              help="tf.distribute strategy (auto: mirrored on several GPUs).")
@click.option("--cpu-replicas", type=int, help="Split the CPU into N logical devices (tests the mirrored path).")
@click.option("--jit/--no-jit", "jit_compile", default=None,
              help="Compile the train step with XLA (default: on for GPU/TPU, off on CPU).")
@click.option("--precision", type=click.Choice(["float32", "mixed_float16", "mixed_bfloat16"]),
              help="Mixed precision for the network (logits, losses and the SGLR table stay float32).")
@click.option("--seed", type=int, help="Random seed for data order, augmentation and initialisation.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder; an existing run with the same config resumes.")
@click.option("--overwrite", is_flag=True, help="Replace a run in --out that has a different config.")
@click.option("--resume-from", type=click.Path(), help="Start from the weights of this .keras checkpoint "
              "(fresh optimiser and soft-label table).")
@click.option("--set", "assignments", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Set any config key, e.g. --set model.width=0.5 --set evaluation.every=2 (repeatable).")
@user_errors
def train(config_path, out_dir, overwrite, resume_from, assignments, **flags):
    """Adversarially train a classifier and write checkpoints and history to --out."""
    from sglr_keras.config import load_config
    from sglr_keras.training.run import train as run_training

    overrides = {
        "data.dataset": flags["dataset"], "data.data_dir": flags["data_dir"], "model.arch": flags["arch"],
        "method": flags["method"], "epochs": flags["epochs"], "batch_size": flags["batch_size"],
        "optimizer.lr": flags["lr"], "data.train_subset": flags["train_subset"],
        "data.label_noise": flags["label_noise"], "attack.eps": flags["eps"],
        "sglr.preset": flags["sglr_preset"], "strategy": flags["strategy"],
        "cpu_replicas": flags["cpu_replicas"], "jit_compile": flags["jit_compile"], "seed": flags["seed"],
        "precision": flags["precision"],
    }
    config = load_config(config_path, overrides, assignments)
    console.print(f"training [bold]{config.method}[/] {config.model.arch} on {config.data.dataset} "
                  f"for {config.epochs} epochs -> {out_dir}", highlight=False)
    summary = run_training(config, out_dir, overwrite=overwrite, console=console, resume_from=resume_from)
    results_console.print_json(json.dumps(summary))
