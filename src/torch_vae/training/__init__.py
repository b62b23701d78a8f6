"""Training: the Python entry point (run.py: ``train``), the run's plan (plan.py), its folder
(rundir.py), the loop (loop.py) and its resumable state (state.py), the batches (batches.py),
the optimizer and torch.compile (compile.py), torchrun (distributed.py), the experiment loggers
(loggers.py), and weight averaging after training (averaging.py)."""

from .config import TrainConfig
from .run import TrainedRun, execute, train

__all__ = ["TrainConfig", "TrainedRun", "execute", "train"]
