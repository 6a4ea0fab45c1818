"""The benchmark harness: the paper's four benchmarks read from a user's copy, edited resumably, scored, reported.

Data flows one way: `cases` reads a benchmark into uniform edit cases, `runner` (or `distributed` on Ray) writes the
prompt stage for all of them and then edits them through `ifedit.editor.Editor` into the layout of `layout`,
`scoring` measures the outputs, and `report` puts the numbers beside the paper's (`published`).
"""
