"""Domain specialists: the built-in task domains (math, code, instruct, agent: prompt sources,
rewards, held-out suites; ``specialists.domains`` registers them) and the training loops that
make specialists (GRPO, SFT)."""
