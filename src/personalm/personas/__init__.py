"""Persona Hub: mine personas from text, expand them through relations, deduplicate, query."""
