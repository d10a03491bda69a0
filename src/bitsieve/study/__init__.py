"""Studies of models: plan -> units -> rows, one engine for ``bitsieve compare`` and ``bitsieve sweep``.

- ``sweepfile``: the sweep file format (models x formats x groups x methods x design variants) and its tasks;
- ``pipeline``: what a unit does (a sweep task's profile, simulation and accuracy; a compare unit's accuracy
  records, one design's simulation, the activation profile);
- ``engine``: runs units in this process, a local process pool or on Ray, results as they finish;
- ``progress``: the terminal bars.

``bitsieve.sweep`` adds the resumable store to a sweep; ``bitsieve.compare`` is the preset that plans the
main job's units and presents its rows.
"""
