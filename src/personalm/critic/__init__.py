"""The preference critic: P(an answer respects the user's stated preferences), from a small
cross-encoder trained on PrefEval topics and validated and tested on topics it never trained on."""

from personalm.critic.data import split_topics
from personalm.critic.model import PreferenceCritic, default_critic_dir

__all__ = ["PreferenceCritic", "default_critic_dir", "split_topics"]
