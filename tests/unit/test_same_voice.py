"""enrollment.same_voice: the new voiceprint against every other enrolled user's, with a real
Scorer and a real (synthetic, centre) cohort on disk; synthetic speakers as embeddings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from voxgate import cohort as cohortmod
from voxgate.config.speaker import SpeakerConfig
from voxgate.enrollment import same_voice
from voxgate.scoring import Scorer
from voxgate.voiceprints import VoiceprintStore, l2_normalize, mean_embedding

DIM = 64
MODEL = "synthetic-1.0/float"


def voices(seed: int, n: int) -> tuple[np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    return l2_normalize(rng.normal(size=(n, DIM))), rng


def takes(centres: np.ndarray, rng: np.random.Generator, spk: int, k: int = 5) -> np.ndarray:
    return l2_normalize(centres[spk] + rng.normal(size=(k, DIM)) * 0.9 / np.sqrt(DIM))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[VoiceprintStore, SpeakerConfig, np.ndarray, np.random.Generator]:
    cc, crng = voices(1, 60)  # cohort speakers, none of them enrolled
    cohort = cohortmod.build_centered(
        MODEL, {f"c{i}": list(takes(cc, crng, i, 6)) for i in range(60)}
    )
    cfg = SpeakerConfig(cohort=cohortmod.save(cohort, tmp_path / "cohort"))
    centres, rng = voices(2, 4)
    store = VoiceprintStore(tmp_path / "vp.db", bytes(32))
    store.add_user("Ann", takes(centres, rng, 0), MODEL)
    store.add_user("ben", takes(centres, rng, 1), MODEL)
    store.add_user("old", takes(centres, rng, 0), "another-model/int8")  # not comparable
    yield store, cfg, centres, rng
    store.close()


def test_the_same_voice_under_another_name_is_named_with_the_door_score(setup: tuple) -> None:
    store, cfg, centres, rng = setup
    embedder = SimpleNamespace(model_id=MODEL)
    new = takes(centres, rng, 0)
    found = same_voice(new, "newbie", store, embedder, cfg)
    assert found is not None
    scorer = Scorer(store, embedder, cfg, cohortmod.for_model(MODEL, cfg.cohort))
    door = scorer.verify(mean_embedding(new), "Ann")  # what the door would score
    assert [u for u, _ in found.matches] == ["Ann"]  # not ben; not another model's "old"
    assert found.matches[0][1] == pytest.approx(door.score, abs=1e-5)
    assert found.threshold == pytest.approx(door.threshold) and door.accepted
    assert found.audit() == [
        {"user": "Ann", "score": round(door.score, 3), "threshold": round(door.threshold, 3)}
    ]
    assert found.text().startswith(
        f"the takes sound like enrolled user 'Ann' (score {door.score:.2f}, "
        f"threshold {door.threshold:.2f}): the same person under two names?"
    )
    assert "erase one of them" in found.text()


def test_another_voice_the_user_replaced_and_no_cohort_give_no_warning(
    setup: tuple, tmp_path: Path
) -> None:
    store, cfg, centres, rng = setup
    embedder = SimpleNamespace(model_id=MODEL)
    assert same_voice(takes(centres, rng, 2), "cat", store, embedder, cfg) is None
    # Re-enrolling Ann (any case of her name): her old voiceprint is not another user.
    assert same_voice(takes(centres, rng, 0), "ANN", store, embedder, cfg) is None
    # No cohort (none shipped for this model, none configured): not checked, not an error.
    bare = SpeakerConfig(threshold=0.1)
    assert same_voice(takes(centres, rng, 0), "newbie", store, embedder, bare) is None


def test_a_fixed_threshold_is_the_level(setup: tuple) -> None:
    """speaker.threshold set: that is the door's level, so it is the warning's too."""
    store, cfg, centres, rng = setup
    embedder = SimpleNamespace(model_id=MODEL)
    strict = cfg.model_copy(update={"threshold": 0.999})
    assert same_voice(takes(centres, rng, 0), "newbie", store, embedder, strict) is None
    loose = cfg.model_copy(update={"threshold": -1.0})
    found = same_voice(takes(centres, rng, 2), "cat", store, embedder, loose)
    assert found is not None and found.threshold == -1.0
    assert sorted(u for u, _ in found.matches) == ["Ann", "ben"]
    scores = [s for _, s in found.matches]
    assert scores == sorted(scores, reverse=True)  # best first
    best, second = found.matches
    assert f"enrolled users '{best[0]}' (score {best[1]:.2f}), '{second[0]}'" in found.text()
