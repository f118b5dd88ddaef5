"""Specialist models combined with a generalist (Hinton, Vinyals & Dean 2015, §5).

Import from the modules: :mod:`darkknowledge.specialists.combine` (the combined prediction
``q`` minimizing ``KL(p_g ‖ q) + Σ_m KL(p_m ‖ q_m)``, the active-specialist rule and the
(B, M, C + 1) specialist layout), ``clusters``, ``train``, ``evaluate``, ``system``. Nothing is
re-exported here: a function ``combine`` in this namespace would hide the module of that name.
"""
