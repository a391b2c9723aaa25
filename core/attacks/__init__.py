"""Robustness attacks that try to bring forgotten answers back, and their runner.

- base.py: Attack, AttackContext, AttackOutcome, RobustnessSettings, recovery_percent and the ATTACKS registry
- prompts.py, quantize.py, relearn.py, lens.py: the attack families, one module each
- copies.py: merged copies of one side of a pair (what weight attacks change); runner.py: run_attacks and its result

Adding an attack is adding one module here with an `Attack` subclass decorated with `@register`: ATTACKS imports
every module of this package on its first read (base.attack_modules). That first read happens here, when the
package is imported, so the attacks are listed in attack_modules() order whichever module a caller imports first.
"""

from core.attacks.base import ATTACKS

ATTACKS.names()  # the first read: imports every attack module, in attack_modules() order
