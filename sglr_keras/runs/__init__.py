"""The run record: one owner for every file of a run folder.

- :mod:`~sglr_keras.runs.folder`: the file names (``RunFolder``) and their readers,
  each refusing a corrupt file in one line (``read_record``, ``read_selection_points``);
- :mod:`~sglr_keras.runs.lifecycle`: claim and lock a folder, decide fresh / resume /
  extend / refuse, create it, read its state and config;
- :mod:`~sglr_keras.runs.points`: which test points pick the best epoch and which
  are left for the final attacks.

No other module spells a run-folder file name (``tests/test_runs.py`` checks).
"""

from sglr_keras.runs.folder import CHECKPOINT_NAMES, RunFolder, read_record, read_selection_points
from sglr_keras.runs.lifecycle import (RESUMABLE_DIFFERENCES, RunFolderLock, check_run_dir, create_run_dir,
                                       load_run_config, read_json, read_state)
from sglr_keras.runs.points import (final_test_indices, held_out_indices, points_digest, selection_points,
                                    selection_size)

__all__ = ["CHECKPOINT_NAMES", "RESUMABLE_DIFFERENCES", "RunFolder", "RunFolderLock", "check_run_dir", "create_run_dir",
           "final_test_indices", "held_out_indices", "load_run_config", "points_digest", "read_json", "read_record", "read_selection_points",
           "read_state", "selection_points", "selection_size"]
