"""Text corpora and downstream tasks.

Tasks: `load_task(spec, seed=0, **options)` with a registered name (TASKS: polarity, bbc-news, gsm_symbolic,
bigbench:...), "bigbench:<task>[:<subtask>]", "hf:<name>[:<config>]" / "hf:<local path>", or a
.jsonl/.json/.csv file. Text: `load_text("news" | "wiki" | path)`.
"""

from .registry import DEFAULT_TASK, TASKS, load_task
from .tasks import Example, Task, multiple_choice_task, split_examples
from .text import TEXT_SOURCES, load_text

__all__ = ["DEFAULT_TASK", "TASKS", "Example", "Task", "load_task", "multiple_choice_task", "split_examples",
           "TEXT_SOURCES", "load_text"]
