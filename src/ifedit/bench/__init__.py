"""The benchmark harness: the paper's four benchmarks read from a user's copy, edited resumably, scored, reported.

Each benchmark is one object in `benchmarks/` (its loader, output layout, scorer and the paper's numbers) over the
edit cases of `cases`. Data flows one way: `benchmarks.load_cases` reads a benchmark, `runner` (or `distributed` on
Ray) writes the prompt stage for all its cases and then edits them through `ifedit.editor.Editor` into the layout of
`layout`, `scoring` measures the outputs, and `report` puts the numbers beside the paper's.
"""
