"""Persona-driven data synthesis (Persona Hub section 2): tasks, prompting modes, validity, math verification."""
