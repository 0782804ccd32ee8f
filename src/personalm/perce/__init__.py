"""Token-level personalization: PerContrast (which tokens depend on the persona) and PerCE.

Importing the package registers the PerCE loss with the trainer (`--loss perce`)."""

from personalm.perce import loss  # noqa: F401 - registers "perce" in train.losses
