"""The Atari 100k benchmark's 26 games and the published random and human scores that normalise them.

Human-normalised score: (score - random) / (human - random): a random policy scores 0, the human tester 1.
The random and human scores are the ones every Atari 100k paper normalises with (Mnih et al., 2015; the same
table in Kaiser et al., 2020, SPR, DreamerV3 and Agarwal et al., 2021).
"""

from __future__ import annotations

import re

# game: (random, human)
SCORES: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "DemonAttack": (152.1, 1971.0),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MsPacman": (307.3, 6951.6),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7),
    "UpNDown": (533.4, 11693.2),
}
GAMES: tuple[str, ...] = tuple(SCORES)


def game_of(env_name: str) -> str | None:
    """The Atari 100k game of an env name ("envpool:Pong-v5", "gymnasium:ALE/Pong-v5" -> "Pong"), or None."""
    base = re.sub(r"-v\d+$", "", env_name.rpartition(":")[2].rpartition("/")[2])
    lowered = {g.lower(): g for g in GAMES}
    return lowered.get(base.lower())


def human_normalized(game: str, score: float) -> float:
    """(score - random) / (human - random) for one of the 26 games; ValueError naming them otherwise."""
    if game not in SCORES:
        raise ValueError(f"{game!r} is not an Atari 100k game; the 26 games: {', '.join(GAMES)}")
    random, human = SCORES[game]
    return (score - random) / (human - random)
