"""Ansible strategy `mitogen_linear` (ansible.cfg): Ansible's own linear strategy, with the
modules run by Mitogen (https://mitogen.networkgenomics.com/ansible_detailed.html) instead of
one new Python process per task. Same tasks, same order, same results; a run with nothing to
change takes about 40 % of the time (each task costs ~0.6 s here without it, mostly starting
Python and importing the module's dependencies).

Mitogen's CPU pinning is switched off. On a machine with fewer than 4 CPUs its default policy
(ansible_mitogen/affinity.py) pins the controller, every worker and every process a task starts
(SSH, `command`, the tests' pytest and all it runs) to CPU 1 and its multiplexer to CPU 0; on
2 cores that serialises every Ansible run of the machine on one CPU while the other waits, and
`make test` runs three at once. Unpinned, the kernel places them (tests/unit/test_strategy.py).

Mitogen comes from requirements/dev.txt (`make venv`). Without it this falls back to the plain
linear strategy, with a warning. To run without Mitogen anyway: ANSIBLE_STRATEGY=linear.
"""

from __future__ import annotations

try:
    import ansible_mitogen.affinity
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
    # the base Policy pins nothing (FixedPolicy/LinuxPolicy are what pin)
    ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()
    _Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)

    class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):
        pass
