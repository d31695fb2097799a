"""docs/recipe_fields.md is what the schema says, and the schema explains every field."""

from pathlib import Path

from posttrain.fieldref import field_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "recipe_fields.md"


def test_the_committed_field_reference_is_current():
    assert DOC.read_text() == field_reference(), "regenerate it: posttrain fields > docs/recipe_fields.md"


def test_every_field_says_what_it_means():
    rows = [line for line in field_reference().splitlines() if line.startswith("| `")]
    undocumented = [row.split("|")[1].strip() for row in rows if row.rstrip("| ").endswith("|") or row.endswith("|  |")]
    assert not undocumented, f"fields without a description: {undocumented}"
