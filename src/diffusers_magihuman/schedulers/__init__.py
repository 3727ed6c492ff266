from .scheduling_magihuman import MagiHumanScheduler
from .scheduling_utils_magihuman import (
    check_scheduler,
    deterministic_scheduler,
    is_distilled_scheduler,
    magihuman_sigmas,
    retrieve_timesteps,
    scheduler_step,
)


__all__ = [
    "MagiHumanScheduler",
    "check_scheduler",
    "deterministic_scheduler",
    "is_distilled_scheduler",
    "magihuman_sigmas",
    "retrieve_timesteps",
    "scheduler_step",
]
