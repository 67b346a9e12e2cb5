"""Text corpora and downstream tasks."""

from .tasks import DEFAULT_TASK, TASKS, Example, Task, load_task
from .text import TEXT_SOURCES, load_text

__all__ = ["DEFAULT_TASK", "TASKS", "Example", "Task", "load_task", "TEXT_SOURCES", "load_text"]
