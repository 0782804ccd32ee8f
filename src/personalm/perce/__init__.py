"""Token-level personalization: PerContrast (which tokens depend on the persona) and PerCE."""
