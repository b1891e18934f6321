"""The training driver, killed with SIGKILL part-way through saving checkpoint-STEP (tests):

    python -m tests.training.crash_driver RUN_SPEC.json WHERE STEP

WHERE is the moment the process dies, in the order the Trainer writes a checkpoint:
  before_first_file      the folder checkpoint-STEP exists, nothing in it yet (start of `save_model`)
  before_trainer_state   adapter, optimizer, scheduler and rng written, trainer_state.json not yet
  before_marker          every file written (nyx_run.json too), the completion marker not yet
No Python exception, no cleanup: the process ends the way an OOM kill or a lost node ends it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import TrainerState

from nyx_tasks.training import driver

WHERES = ("before_first_file", "before_trainer_state", "before_marker")


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(where: str, step: int) -> tuple:
    """Patch the Trainer so the process dies at `where` of checkpoint-`step`; returns the extra
    callbacks the driver takes."""
    target = f"checkpoint-{step}"
    if where == "before_first_file":
        save_model = Trainer.save_model

        def dying_save_model(self, output_dir=None, _internal_call=False):
            if output_dir and Path(output_dir).name == target:
                os.makedirs(output_dir, exist_ok=True)  # what save_model does first
                die()
            return save_model(self, output_dir, _internal_call)

        Trainer.save_model = dying_save_model
    elif where == "before_trainer_state":
        save_to_json = TrainerState.save_to_json

        def dying_save_to_json(self, json_path):
            if Path(json_path).parent.name == target:
                die()
            return save_to_json(self, json_path)

        TrainerState.save_to_json = dying_save_to_json
    elif where == "before_marker":

        class DieOnSave(TrainerCallback):  # runs after SaveSpec, before CompleteCheckpoints
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == step:
                    die()

        return (DieOnSave(),)
    else:
        raise SystemExit(f"WHERE must be one of {WHERES}")
    return ()


def main(argv: list[str]) -> None:
    spec_path, where, step = argv
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")  # as the driver's main
    callbacks = arm(where, int(step))
    driver.run(json.loads(Path(spec_path).read_text()), callbacks=callbacks)


if __name__ == "__main__":
    main(sys.argv[1:])
