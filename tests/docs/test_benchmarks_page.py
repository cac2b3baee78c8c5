"""docs/benchmarks.md's generated sections are what the committed results render to."""

from bench import docs_sections


def test_every_benchmark_section_matches_its_committed_results():
    assert docs_sections.main([]) == 0
