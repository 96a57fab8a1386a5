"""Ansible strategy `mitogen_linear` (ansible.cfg): Ansible's own linear strategy, with the
modules run by Mitogen (https://mitogen.networkgenomics.com/ansible_detailed.html) instead of
one new Python process per task. Same tasks, same order, same results; a run with nothing to
change takes about 40 % of the time (each task costs ~0.6 s here without it, mostly starting
Python and importing the module's dependencies).

Mitogen comes from requirements/dev.txt (`make venv`). Without it this falls back to the plain
linear strategy, with a warning. To run without Mitogen anyway: ANSIBLE_STRATEGY=linear.
"""

from __future__ import annotations

try:
    import ansible_mitogen.loaders
    import ansible_mitogen.strategy
except ImportError:
    from ansible.plugins.strategy.linear import StrategyModule
    from ansible.utils.display import Display

    Display().warning(
        "mitogen is not installed for this Ansible (make venv installs it): "
        "running the plain linear strategy"
    )
else:
    _Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)

    class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):
        pass
