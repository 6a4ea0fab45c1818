"""A small world of coloured shapes where edits can be checked: procedural clips, a tiny Wan model, detectors."""
