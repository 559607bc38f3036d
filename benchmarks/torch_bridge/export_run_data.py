"""Write what a run folder trained and was measured on to one .npz, so that
`authors_loop.py` can train the SGLR authors' loop in PyTorch on exactly the
same images, (noisy) labels and points, without TensorFlow.

    python benchmarks/torch_bridge/export_run_data.py runs/label_noise_parity/pgd-at --out data/pgd-at.npz

Stored: ``x_train``/``y_train`` (the run's training subset with its noisy labels,
in the order whose index is the soft-label table's row), ``x_select``/``y_select``
(the held-out points that pick the best epoch), ``x_train_eval``/``y_train_eval``
(the training points of the per-epoch train robust accuracy), ``x_final``/``y_final``
(the final attacks' points), images NHWC uint8; and ``__config__``, the run's
config.json, with the epochs our run evaluated.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder written by sglr train / sglr reproduce")
    parser.add_argument("--out", required=True, help="the .npz to write")
    parser.add_argument("--final-points", type=int, default=500, help="how many final points to store")
    args = parser.parse_args()

    from pathlib import Path

    import numpy as np

    from sglr_keras.data import load_dataset
    from sglr_keras.runs import final_test_indices
    from sglr_keras.runs import load_run_config, read_selection_points
    from sglr_keras.training.recipe import evaluated_epochs

    run_dir = Path(args.run_dir)
    config = load_run_config(run_dir)
    data = config.data
    bundle = load_dataset(data.dataset, data.data_dir, data.train_subset, data.label_noise, config.seed,
                          data.label_noise_mode)
    selection = read_selection_points(run_dir)
    if selection is None:
        raise SystemExit(f"'{run_dir}' has no selection_points.json; let its training start first")
    select = np.asarray(selection["test_indices"])
    final = final_test_indices(load_dataset(data.dataset, data.data_dir), run_dir, selection,
                               args.final_points, 0)
    train_eval = bundle.train_indices(config.evaluation.n_train, config.seed)
    meta = {**config.to_dict(), "evaluated_epochs": sorted(evaluated_epochs(config) or range(1, config.epochs + 1)),
            "milestone_epochs": config.optimizer.milestone_epochs(config.epochs), "source_run": str(run_dir)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x_train=bundle.x_train, y_train=bundle.y_train,
                        x_select=bundle.x_test[select], y_select=bundle.y_test[select],
                        x_train_eval=bundle.x_train[train_eval], y_train_eval=bundle.y_train[train_eval],
                        x_final=bundle.x_test[final], y_final=bundle.y_test[final],
                        __config__=json.dumps(meta))
    print(f"wrote {args.out}: {len(bundle.y_train)} training images, {len(select)} selection points, "
          f"{len(final)} final points")


if __name__ == "__main__":
    main()
