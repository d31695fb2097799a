"""The built-in task domains: importing this module registers math, code, instruct and agent.

A domain of your own is one file with ``@register_task`` (``posttrain/core/tasks.py``);
it does not need a line here.
"""

from .agent_task import AgentTask
from .code_task import CodeTask
from .instruct_task import InstructTask
from .math_task import MathTask

BUILTIN_DOMAINS = {task.domain: task for task in (MathTask, CodeTask, InstructTask, AgentTask)}
