"""A reward that a random tiny model earns unevenly (the share of vowels in its answer), so the
resume test's groups have non-zero advantages and losses. Named ``tests.resume_reward:vowel_share``."""


def vowel_share(prompt: str, completion: str, **fields) -> float:
    letters = [c for c in completion.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / max(len(letters), 1)
