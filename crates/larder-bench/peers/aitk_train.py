"""AI Toolkit's SD trainer fed by its own loader or by larder's drop-in, for `larder-bench aitk`.

Two commands:

  aitk_train.py job <fixtures> <aitk> <work> <images> <resolution> <batch> <steps> <workers> <store>
      With the drop-in's test fixtures (aitk_fixtures.py in the folder <fixtures>), builds the
      tiny random SD1.5 model in <work>/tiny-sd15 (once) and writes <work>/job.yaml: a LoRA job
      over the <images> folder, latents cached to disk, AI Toolkit's loader with <workers>
      workers, its training folder <work>/runs, and a `larder: {store: <store>}` section that
      only larder reads. Prints one JSON object: {"job", "env"}, env being the
      environment a training run needs (offline, CPU).

  aitk_train.py train <aitk|larder> <aitk> <job> <report.json>
      Runs the job: `aitk` with AI Toolkit's own SDTrainer and data loader, `larder` as
      `python -m larder.aitk run <job> --aitk <aitk>` does. Both go through this script, so both
      start alike, and both are watched alike: the trainer class they share (SDTrainer, which
      larder's subclasses) is given a timer that also keeps every wait for a batch, and its
      training step notes when it first runs and how long each takes. Writes <report.json>:
      {"first_step_at" (Unix seconds), "data_wait", "step_seconds" (seconds per step, in step
      order: the wait for the step's batch, the step itself)}.

The model, the job and the environment are the drop-in tests' (bindings/python/tests).
"""

import json
import sys
import time
from pathlib import Path

# The timers AI Toolkit's training loop wraps around taking a batch: `get_batch` for each
# batch, `reset_batch` for starting a new epoch's iterator (and their `:reg` twins).
DATA_TIMERS = ("get_batch", "reset_batch", "get_batch:reg", "reset_batch:reg")


def write_job(fixtures, aitk, work, images, resolution, batch, steps, workers, store):
    sys.path.insert(0, fixtures)
    import aitk_fixtures as fx

    work = Path(work)
    model = work / "tiny-sd15"
    if not (model / "model_index.json").is_file():
        fx.build_tiny_sd15(str(model))
    job = fx.aitk_job("sd15", "bench", work / "runs", Path(images).resolve(), model,
                      steps=int(steps), process_type="sd_trainer",
                      resolution=[int(resolution)], num_workers=int(workers))
    process = job["config"]["process"][0]
    process["train"]["batch_size"] = int(batch)
    # AI Toolkit ignores a top-level section it does not know; larder's drop-in reads its store here.
    job["larder"] = {"store": str(Path(store).resolve())}
    path = fx.write_job(job, str(work / "job.yaml"))
    print(json.dumps({"job": path, "env": fx.aitk_env(aitk, str(work))}))


class StepWatch:
    """What the benchmark reads from a training run, gathered from inside AI Toolkit's trainer."""

    def __init__(self):
        self.first_step_at = None
        self.data_wait = []
        self.step_seconds = []
        self._waited = 0.0

    def watch(self, trainer_class):
        """Wraps ``trainer_class``'s hook before the training loop (to give it a timer that
        keeps the data waits) and its training step (to take each step's wait and time it)."""
        from toolkit.timer import Timer  # type: ignore[import-not-found]

        watch = self

        class DataWaitTimer(Timer):
            """AI Toolkit's timer, also adding each batch wait up for the step it belongs to."""

            def stop(self, timer_name):
                super().stop(timer_name)
                if timer_name in DATA_TIMERS:
                    watch._waited += self.timers[timer_name][-1]

        before_loop, train_step = trainer_class.hook_before_train_loop, trainer_class.hook_train_loop

        def hook_before_train_loop(trainer):
            before_loop(trainer)
            trainer.timer = DataWaitTimer(trainer.timer.name)

        def hook_train_loop(trainer, batch):
            started = time.time()
            if watch.first_step_at is None:
                watch.first_step_at = started
            watch.data_wait.append(watch._waited)
            watch._waited = 0.0
            loss = train_step(trainer, batch)
            watch.step_seconds.append(time.time() - started)
            return loss

        trainer_class.hook_before_train_loop = hook_before_train_loop
        trainer_class.hook_train_loop = hook_train_loop

    def report(self):
        return {"first_step_at": self.first_step_at, "data_wait": self.data_wait, "step_seconds": self.step_seconds}


def train(contender, aitk, job, report):
    from larder.aitk.toolkit import enter, make_job, read_job, tolerate_broken_model_packages

    enter(Path(aitk))
    tolerate_broken_model_packages()
    from extensions_built_in.sd_trainer.SDTrainer import SDTrainer  # type: ignore[import-not-found]

    watch = StepWatch()
    watch.watch(SDTrainer)
    if contender == "aitk":
        # As the drop-in's tests run AI Toolkit's own data path (test_aitk.py, OWN_DATA_PATH).
        runner = make_job(read_job(job), {"sd_trainer": SDTrainer})
        runner.run()
        runner.cleanup()
    elif contender == "larder":
        from larder.aitk.__main__ import main

        code = main(["run", job, "--aitk", aitk])
        if code:
            sys.exit(code)
    else:
        sys.exit(f"unknown contender {contender!r}: aitk or larder")
    Path(report).write_text(json.dumps(watch.report()))


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "job":
        write_job(*args)
    elif command == "train":
        train(*args)
    else:
        sys.exit(f"unknown command {command!r}: job or train")


if __name__ == "__main__":
    main()
