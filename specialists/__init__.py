"""Domain specialists: tasks (prompt sources, rewards, held-out suites) and the GRPO loop."""
