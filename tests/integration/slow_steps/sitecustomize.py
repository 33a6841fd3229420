"""Loaded by the child interpreters of the kill-and-resume tests (PYTHONPATH): with
LEANTUNE_TEST_STEP_DELAY set, each micro-batch waits that long, so that the test reliably
sees a checkpoint and kills the run before it finishes. The numbers computed are untouched.
LEANTUNE_TEST_HOOK_MARK, when set, names a file created to show the hook was loaded."""
import os

if os.environ.get("LEANTUNE_TEST_STEP_DELAY"):
    import time

    from leantune.training import engine

    _micro_batch = engine.Engine.micro_batch

    def micro_batch(self, *args):
        time.sleep(float(os.environ["LEANTUNE_TEST_STEP_DELAY"]))
        return _micro_batch(self, *args)

    engine.Engine.micro_batch = micro_batch
    if os.environ.get("LEANTUNE_TEST_HOOK_MARK"):
        open(os.environ["LEANTUNE_TEST_HOOK_MARK"], "w").close()
