"""Actors: the relaxation environment, the teachers, structures and the actor loops.

Importing this package registers the Gymnasium ids ``relaxrl/Relax-v0`` and
``relaxrl/FixedRelax-v0`` (entry points are strings, so nothing heavy is imported until
``gymnasium.make``); without gymnasium installed the registration is skipped.
"""


def _register_gym() -> None:
    # optional here: registering the ids must never make importing actors fail
    try:
        import gymnasium
    except ImportError:  # gymnasium is a runtime dependency, but never fail the import for it
        return
    for env_id, entry in (("relaxrl/Relax-v0", "actors.gym_env:RelaxGymEnv"),
                          ("relaxrl/FixedRelax-v0", "actors.gym_env:FixedRelaxGymEnv")):
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry)


_register_gym()
