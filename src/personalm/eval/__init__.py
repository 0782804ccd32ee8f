"""Evaluation: PrefEval loading and option scoring (prefeval), pairwise judges (judges), text
measures (text), persona-term recall and PIR precision@k (persona), diversity (diversity), tone
scorers (tone) and the paired bootstrap of a difference between two conditions (bootstrap)."""
