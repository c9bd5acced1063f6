"""Scoring: AS-norm arithmetic, FMR-calibrated thresholds, verify / open-set identify, gate."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.store_helpers import damage_row
from voxgate import cohort as cohortmod
from voxgate.config.speaker import SpeakerConfig
from voxgate.quality import Quality
from voxgate.scoring import Scorer, ScoringError, asnorm, asnorm_stats
from voxgate.voiceprints import StoreError, VoiceprintStore, l2_normalize

DIM = 64
MODEL = "synthetic-1.0/float"


class Voices:
    """Synthetic speakers: a unit centre each, utterances scattered around it."""

    def __init__(self, seed: int, n: int, spread: float = 0.9) -> None:
        self.rng = np.random.default_rng(seed)
        self.centres = l2_normalize(self.rng.normal(size=(n, DIM)))
        self.spread = spread

    def utt(self, spk: int, k: int = 1) -> np.ndarray:
        noise = self.rng.normal(size=(k, DIM)) * self.spread / np.sqrt(DIM)
        return l2_normalize(self.centres[spk] + noise)


@functools.lru_cache(maxsize=4)
def _cohort(seed: int = 0, n: int = 120, top_k: int = 40) -> cohortmod.Cohort:
    v = Voices(seed, n)
    speakers = {f"c{i}": list(v.utt(i, 4)) for i in range(n)}
    return cohortmod.build(MODEL, speakers, top_k=top_k)


def test_asnorm_stats_matches_definition() -> None:
    rng = np.random.default_rng(1)
    s = rng.normal(size=(3, 50))
    mu, sd = asnorm_stats(s, 10)
    for row, m, d in zip(s, mu, sd, strict=True):
        top = np.sort(row)[::-1][:10]
        assert m == pytest.approx(top.mean())
        assert d == pytest.approx(top.std() + 1e-6)
    s[0, np.argsort(s[0])[-3:]] = -np.inf  # excluded entries never count
    mu2, _ = asnorm_stats(s[:1], 10)
    finite = np.sort(s[0][np.isfinite(s[0])])[::-1][:10]
    assert mu2[0] == pytest.approx(finite.mean())


def test_asnorm_symmetric_and_shift_invariant() -> None:
    v = Voices(2, 30)
    coh = v.centres[10:]
    e, t = v.utt(0)[0], v.utt(1)[0]
    a = asnorm(float(e @ t), e, t, coh, 10)
    b = asnorm(float(t @ e), t, e, coh, 10)
    assert a == pytest.approx(b)


def test_threshold_interpolation() -> None:
    c = cohortmod.Cohort(MODEL, np.eye(12, dtype=np.float32), 5, ((0.01, 2.0), (0.001, 3.0)))
    assert c.threshold_for(0.01) == pytest.approx(2.0)
    assert c.threshold_for(0.001) == pytest.approx(3.0)
    assert 2.0 < c.threshold_for(0.003) < 3.0
    assert c.threshold_for(0.5) == 2.0 and c.threshold_for(1e-6) == 3.0


def test_calibrated_threshold_gives_target_fmr_on_new_impostors() -> None:
    cohort = _cohort()
    thr = cohort.threshold_for(0.01)
    # Fresh speakers, none in the cohort: the impostor rate at thr should be near 1 %.
    v = Voices(99, 60)
    models = np.stack([l2_normalize(v.utt(i, 3).mean(0)) for i in range(60)])
    tests = np.concatenate([v.utt(i, 3) for i in range(60)])
    owner = np.repeat(np.arange(60), 3)
    raw = tests @ models.T
    fa = n = 0
    for i in range(60):
        imp = owner != i
        s = asnorm(raw[imp, i], np.repeat(models[i : i + 1], imp.sum(), 0), tests[imp],
                   cohort.embeddings, cohort.top_k)  # fmt: skip
        fa += int((s >= thr).sum())
        n += int(imp.sum())
    assert 0.002 < fa / n < 0.03


def test_cohort_save_load_and_model_check(tmp_path: Path) -> None:
    cohort = _cohort(n=30, top_k=10)
    path = cohortmod.save(cohort, tmp_path)
    back = cohortmod.for_model(MODEL, path)
    np.testing.assert_allclose(back.embeddings, cohort.embeddings, atol=1e-6)
    assert back.calibration == cohort.calibration and back.top_k == 10
    with pytest.raises(cohortmod.CohortError, match="loaded"):
        cohortmod.for_model("other/int8", path)
    assert path.name == "synthetic-1.0--float.npz"
    # A cohort made from another build of the same model id is refused when the sha is known.
    tagged = cohortmod.Cohort(MODEL, cohort.embeddings, 10, cohort.calibration,
                              {"model_sha256": "a" * 64, "command": "voxgate eval X"})  # fmt: skip
    tagged_path = cohortmod.save(tagged, tmp_path / "tagged")
    assert cohortmod.for_model(MODEL, tagged_path, "a" * 64).info["model_sha256"] == "a" * 64
    with pytest.raises(cohortmod.CohortError, match="rebuild it: voxgate eval X"):
        cohortmod.for_model(MODEL, tagged_path, "b" * 64)
    # Its files are there: the rebuild it names needs --replace, else it is refused.
    built = replace(tagged, info={**tagged.info, "command": "voxgate eval S --build-cohort D"})
    built_path = cohortmod.save(built, tmp_path / "built")
    with pytest.raises(cohortmod.CohortError, match=r"voxgate eval S --build-cohort D --replace$"):
        cohortmod.for_model(MODEL, built_path, "b" * 64)
    (tmp_path / "synthetic-1.0--float.json").write_text("{}")
    with pytest.raises(cohortmod.CohortError, match="not a"):
        cohortmod.load(path)
    with pytest.raises(cohortmod.CohortError, match="no cohort shipped"):
        cohortmod.for_model("no-such-model/x")


@pytest.fixture
def enrolled(tmp_path: Path) -> tuple[VoiceprintStore, Voices]:
    v = Voices(7, 5)
    store = VoiceprintStore(tmp_path / "vp.db", bytes(32))
    for i, name in enumerate(["ann", "ben", "cat"]):
        store.add_user(name, v.utt(i, 5), MODEL)
    yield store, v
    store.close()


def _scorer(store: VoiceprintStore, **cfg: object) -> Scorer:
    return Scorer(store, SimpleNamespace(model_id=MODEL), SpeakerConfig(**cfg), _cohort())


def test_verify_genuine_and_impostor(enrolled: tuple[VoiceprintStore, Voices]) -> None:
    store, v = enrolled
    sc = _scorer(store)
    ok = sc.verify(v.utt(0)[0], "ann")
    assert ok.accepted and ok.quality_ok and ok.user == "ann" and ok.score >= ok.threshold
    bad = sc.verify(v.utt(4)[0], "ann")
    assert not bad.accepted and "score_below_threshold" in bad.reasons
    assert bad.raw_cosine < ok.raw_cosine
    missing = sc.verify(v.utt(0)[0], "zed")
    assert not missing.accepted and missing.reasons == ("unknown_user",)


def test_identify_open_set(enrolled: tuple[VoiceprintStore, Voices]) -> None:
    store, v = enrolled
    sc = _scorer(store)
    hit = sc.identify(v.utt(1)[0])
    assert hit.accepted and hit.user == "ben"
    stranger = sc.identify(v.utt(3)[0])
    assert stranger.user is None and not stranger.accepted
    assert stranger.reasons == ("unknown_speaker",)
    # 1:N uses a stricter per-comparison threshold than 1:1.
    assert sc.threshold(3) > sc.threshold(1)


def test_identify_skips_a_damaged_voiceprint_and_still_finds_the_others(
    enrolled: tuple[VoiceprintStore, Voices], caplog: pytest.LogCaptureFixture
) -> None:
    """One damaged row used to deny every user of an identify-mode door; now only its owner
    (who cannot be verified anyway) is missing, with an error line per attempt."""
    store, v = enrolled
    damage_row(store, "ann")
    sc = _scorer(store)
    hit = sc.identify(v.utt(1)[0])
    assert hit.accepted and hit.user == "ben"
    assert hit.threshold == sc.threshold(3)  # the damaged row still counts for the 1:N bound
    assert "1 voiceprint(s)" in caplog.text and "skipped" in caplog.text
    assert not sc.identify(v.utt(0)[0]).accepted  # ann's own voice finds nobody
    assert [p.name for p in store.readable()[0]] == ["ben", "cat"]
    with pytest.raises(StoreError, match="fails authentication"):
        store.all()  # listing and export stay strict
    # Every row damaged (or a wrong key): the store as a whole is unreadable.
    damage_row(store, "ben")
    damage_row(store, "cat")
    with pytest.raises(StoreError, match="none of its 3 voiceprint"):
        sc.identify(v.utt(1)[0])


def test_quality_gate_gives_retry_not_a_guess(enrolled: tuple[VoiceprintStore, Voices]) -> None:
    store, v = enrolled
    sc = _scorer(store, min_speech_s=1.0, min_snr_db=5.0)
    short = Quality(duration_s=1.0, speech_s=0.4, snr_db=30.0, snr_from_pauses=True, clipped=0.0)
    r = sc.verify(v.utt(0)[0], "ann", quality=short)
    assert not r.accepted and not r.quality_ok and r.reasons == ("too_little_speech",)
    noisy = Quality(duration_s=3.0, speech_s=2.5, snr_db=1.0, snr_from_pauses=True, clipped=0.0)
    r = sc.identify(v.utt(0)[0], quality=noisy)
    assert not r.accepted and not r.quality_ok and "too_noisy" in r.reasons
    good = Quality(duration_s=3.0, speech_s=2.5, snr_db=25.0, snr_from_pauses=True, clipped=0.0)
    assert sc.verify(v.utt(0)[0], "ann", quality=good).accepted
    # The caller may set this attempt's minimum (a passphrase heard in full: 0.6 s).
    short = Quality(duration_s=1.0, speech_s=0.7, snr_db=30.0, snr_from_pauses=True, clipped=0.0)
    assert not sc.verify(v.utt(0)[0], "ann", quality=short).quality_ok
    assert sc.verify(v.utt(0)[0], "ann", short, 0.6).accepted
    assert sc.identify(v.utt(0)[0], short, 0.6).user == "ann"


def test_model_mismatch_is_refused(enrolled: tuple[VoiceprintStore, Voices]) -> None:
    store, v = enrolled
    store.add_user("old", v.utt(2, 3), "previous-model/float")
    sc = _scorer(store)
    r = sc.verify(v.utt(2)[0], "old")
    assert not r.accepted and "model_mismatch" in r.reasons
    assert sc.identify(v.utt(2)[0]).user == "cat"  # 'old' is skipped, not compared


def test_unscored_is_a_retry_with_the_threshold_and_enrollment_facts_and_no_score(
    enrolled: tuple[VoiceprintStore, Voices], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audio too short to embed: `voxgate verify` ran verify/identify on a placeholder
    vector for the threshold and who is enrolled, and dropped the score. unscored gives
    those facts without scoring anything."""
    store, v = enrolled
    store.add_user("old", v.utt(2, 3), "previous-model/float")
    sc = _scorer(store, min_speech_s=1.0, min_snr_db=5.0)

    def no_scoring(*args: object) -> None:
        raise AssertionError("nothing to score: there is no embedding")

    monkeypatch.setattr(sc, "score", no_scoring)
    short = Quality(duration_s=0.4, speech_s=0.3, snr_db=30.0, snr_from_pauses=True, clipped=0.0)
    r = sc.unscored("ANN", short)
    assert r.user == "ann" and r.threshold == sc.threshold(1)  # the name as enrolled
    assert r.score == r.raw_cosine == float("-inf") and not r.accepted and not r.quality_ok
    assert r.reasons == ("too_little_speech",)
    assert sc.unscored("zed", short).reasons == ("too_little_speech", "unknown_user")
    assert sc.unscored("old", short).reasons == ("too_little_speech", "model_mismatch")
    anyone = sc.unscored(None, short)
    assert anyone.user is None and anyone.reasons == ("too_little_speech",)
    assert anyone.threshold == sc.threshold(3)  # 1:N over ann, ben, cat ('old' skipped)
    # The gate's other reasons stay, after too_little_speech even when the gate let the
    # speech through (the model still could not embed it).
    noisy = Quality(duration_s=1.0, speech_s=1.5, snr_db=1.0, snr_from_pauses=True, clipped=0.0)
    assert sc.unscored("ann", noisy).reasons == ("too_little_speech", "too_noisy")
    empty = VoiceprintStore(tmp_path / "empty.db", bytes(32))
    nobody = _scorer(empty).unscored(None, short)
    assert nobody.reasons == ("too_little_speech", "no_users") and nobody.user is None
    empty.close()


def test_fixed_threshold_and_missing_calibration(tmp_path: Path) -> None:
    store = VoiceprintStore(tmp_path / "vp.db", bytes(32))
    emb = SimpleNamespace(model_id=MODEL)
    with pytest.raises(ScoringError, match="no calibrated cohort"):
        Scorer(store, emb, SpeakerConfig(), None)
    sc = Scorer(store, emb, SpeakerConfig(threshold=0.7), None)
    assert sc.threshold(5) == 0.7
    store.close()


# --- "center" cohorts (the shipped method) ------------------------------------------------------


class SharedChannel(Voices):
    """Voices that all share one strong direction (language, channel): raw cosines between
    different speakers are high, which centering removes."""

    def __init__(self, seed: int, n: int) -> None:
        super().__init__(seed, n, spread=0.9)
        common = l2_normalize(np.random.default_rng(1234).normal(size=DIM))
        self.centres = l2_normalize(self.centres + 2.0 * common)


@functools.lru_cache(maxsize=2)
def _centered(seed: int = 0, n: int = 80) -> cohortmod.Cohort:
    v = SharedChannel(seed, n)
    speakers = {f"c{i}": list(v.utt(i, 6)) for i in range(n)}
    return cohortmod.build_centered(MODEL, speakers, top_k=20)


def test_centered_cohort_calibrates_and_transfers() -> None:
    cohort = _centered()
    assert cohort.method == "center" and cohort.center.shape == (DIM,)
    assert cohort.info["calibration_trials"] > 1000
    thr = cohort.threshold_for(0.01)
    v = SharedChannel(77, 50)  # fresh speakers, same channel
    models = np.stack([l2_normalize(v.utt(i, 3).mean(0)) for i in range(50)])
    tests = np.concatenate([v.utt(i, 2) for i in range(50)])
    owner = np.repeat(np.arange(50), 2)
    scores = np.stack([cohortmod.centered_cosine(models, t, cohort.center) for t in tests])
    imp = owner[:, None] != np.arange(50)[None, :]
    fmr = float((scores[imp] >= thr).mean())
    assert 0.002 < fmr < 0.03
    # Centering separates what the shared direction hides in the raw cosine.
    raw = tests @ models.T
    gap_raw = raw[~imp].mean() - raw[imp].mean()
    gap_centered = scores[~imp].mean() - scores[imp].mean()
    assert gap_centered > gap_raw


class TwoKinds(SharedChannel):
    """SharedChannel voices of two kinds (as women and men): each leans to its kind's side."""

    def __init__(self, seed: int, n: int) -> None:
        super().__init__(seed, n)
        kinds = l2_normalize(np.random.default_rng(99).normal(size=(2, DIM)))
        self.kind = np.arange(n) // 2 % 2  # not the folds' alternation (sorted names)
        self.centres = l2_normalize(self.centres + 1.2 * kinds[self.kind])


def test_voice_groups_find_the_two_kinds_whatever_the_order() -> None:
    v = TwoKinds(3, 60)
    means = np.stack([l2_normalize(v.utt(i, 6).mean(0)) for i in range(60)])
    center = cohortmod.center_of(means)
    group = cohortmod.voice_groups(means, center)
    assert np.array_equal(group, v.kind) or np.array_equal(group, 1 - v.kind)
    order = np.random.default_rng(0).permutation(60)
    again = cohortmod.voice_groups(means[order], center)
    assert np.array_equal(again == again[0], group[order] == group[order][0])


def test_calibration_within_voice_groups_takes_impostors_of_the_models_own_group() -> None:
    v = TwoKinds(4, 80)
    speakers = {f"c{i:02d}": list(v.utt(i, 6)) for i in range(80)}
    grouped = cohortmod.build_centered(MODEL, speakers, top_k=20)  # as shipped
    # Two folds of 40 speakers, 20 of each kind; a model (3 pieces) meets the 3 later
    # pieces of each of the 19 other speakers of its kind in its fold.
    assert grouped.info["calibration_trials"] == 2 * 40 * 19 * 3
    assert grouped.info["voice_groups"] == [40, 40]
    pooled = cohortmod.build_centered(MODEL, speakers, top_k=20, within_voice_groups=False)
    assert pooled.info["calibration_trials"] == 2 * 40 * 39 * 3
    assert "voice_groups" not in pooled.info
    # The other kind's impostors are easy to refuse: counted, they pulled the threshold down.
    for fmr in (0.1, 0.01, 0.001):
        assert grouped.threshold_for(fmr) > pooled.threshold_for(fmr) + 0.01


def test_shipped_cohort_groups_put_women_and_men_apart(shared_data: Path) -> None:
    """The voice groups of the shipped cohort, on speakers whose gender is known
    (vcc2018_eval names them: SF/TF women, SM/TM men), as benchmarks/voice_groups.py prints
    them (docs/speaker-verification.md: "Calibrating within voice groups")."""
    from voxgate.embedding import load_embedder
    from voxgate.evaluation import load_recording, read_set

    card = Path(cohortmod.__file__).parent / "models" / "ge2e-int8.yaml"
    embedder = load_embedder(card)
    cohort = cohortmod.load(cohortmod.default_dir() / (cohortmod.slug(embedder.model_id) + ".npz"))
    group = cohortmod.voice_groups(cohort.embeddings, cohort.center)
    cents = l2_normalize(
        np.stack(
            [l2_normalize(cohort.embeddings[group == k] - cohort.center).mean(0) for k in (0, 1)]
        )
    )
    es = read_set(shared_data / "vcc2018_eval")
    side = {}
    for model, recs in es.enroll.items():
        emb = l2_normalize(np.mean([embedder.embed(load_recording(es.root, r)) for r in recs], 0))
        side[model] = int(np.argmax(cents @ l2_normalize(emb - cohort.center)))
    women = {side[m] for m in side if m[5] == "F"}
    men = {side[m] for m in side if m[5] == "M"}
    assert len(women) == 1 and len(men) == 1 and women != men, side


def test_scorer_uses_the_cohort_method(tmp_path: Path) -> None:
    v = SharedChannel(5, 3)
    store = VoiceprintStore(tmp_path / "vp.db", bytes(32))
    store.add_user("ann", v.utt(0, 4), MODEL)
    cohort = _centered()
    sc = Scorer(store, SimpleNamespace(model_id=MODEL), SpeakerConfig(), cohort)
    t = v.utt(0)[0]
    r = sc.verify(t, "ann")
    vp = store.get("ann")
    expected = float(l2_normalize(vp.mean - cohort.center) @ l2_normalize(t - cohort.center))
    assert r.score == pytest.approx(expected, abs=1e-6)
    assert r.raw_cosine == pytest.approx(float(vp.mean @ t), abs=1e-6)
    assert r.accepted and not sc.verify(v.utt(1)[0], "ann").accepted
    store.close()


def test_centered_cohort_file_round_trip_and_bad_files(tmp_path: Path) -> None:
    cohort = _centered()
    path = cohortmod.save(cohort, tmp_path)
    back = cohortmod.load(path)
    assert back.method == "center" and back.calibration == cohort.calibration
    np.testing.assert_allclose(back.center, cohort.center, atol=1e-6)
    old = cohortmod.load(cohortmod.save(_cohort(n=30, top_k=10), tmp_path / "old"))
    assert old.method == "asnorm" and old.center is None  # files from before: AS-norm
    meta = tmp_path / "synthetic-1.0--float.json"
    text = meta.read_text()
    meta.write_text(text.replace('"method": "center"', '"method": "magic"'))
    with pytest.raises(cohortmod.CohortError, match="unknown method"):
        cohortmod.load(path)
    meta.write_text(text)
    np.savez(path, embeddings=cohort.embeddings)  # the centre vector lost
    with pytest.raises(cohortmod.CohortError, match="center vector"):
        cohortmod.load(path)


def test_pieces_are_short_and_reproducible() -> None:
    pcm = np.arange(16000 * 13, dtype=np.int16)
    a = cohortmod.pieces(pcm, seed=3)
    assert a and all(1.5 * 16000 - 1 <= len(p) <= 3.0 * 16000 for p in a)
    assert sum(len(p) for p in a) > len(pcm) - 3 * 16000
    assert [len(p) for p in a] == [len(p) for p in cohortmod.pieces(pcm, seed=3)]
    assert cohortmod.pieces(pcm[:16000], seed=3) == []


def test_cohort_tie_covers_the_preprocessing(tmp_path: Path) -> None:
    from voxgate.embedding import load_card

    card = load_card()
    assert card.trim is not None
    shipped_tie = cohortmod.model_sha256(SimpleNamespace(card=card))
    assert shipped_tie is not None and len(shipped_tie) == 64
    assert cohortmod.for_model(card.id, None, shipped_tie).method == "center"  # it fits
    overlap = card.windowing.model_copy(update={"hop": card.windowing.frames // 2})
    for changed in (
        card.model_copy(update={"trim": None}),
        card.model_copy(update={"windowing": overlap}),
        card.model_copy(update={"frontend": card.frontend.model_copy(update={"fmax": 7600.0})}),
    ):
        tie = cohortmod.model_sha256(SimpleNamespace(card=changed))
        assert tie not in (shipped_tie, card.model.sha256)
        with pytest.raises(cohortmod.CohortError, match="preprocessing"):
            cohortmod.for_model(card.id, None, tie)


def _shipped_cohort_tied_as(tmp_path: Path, card: Any, preprocess: dict) -> Path:
    """A copy of the shipped cohort whose tie an earlier voxgate made: the model file's sha256
    hashed with `preprocess` only (what that voxgate recorded)."""
    import hashlib
    import shutil

    blob = json.dumps({"model_sha256": card.model.sha256, **preprocess}, sort_keys=True)
    shipped = cohortmod.default_dir() / (cohortmod.slug(card.id) + ".npz")
    npz = tmp_path / shipped.name
    shutil.copy(shipped, npz)
    doc = json.loads(shipped.with_suffix(".json").read_text())
    doc.update(model_sha256=hashlib.sha256(blob.encode()).hexdigest(), preprocess=preprocess)
    npz.with_suffix(".json").write_text(json.dumps(doc))
    return npz


def test_a_cohort_tied_the_earlier_way_says_why_it_is_refused(tmp_path: Path) -> None:
    """Until d5e569d a cohort's tie covered the model file and the card's `trim:` only. A
    cohort built then for a card whose front end and windows have not changed since (a
    custom model's, or a card kept at `hop: 80`) is refused as "built from another file or
    preprocessing": nothing of the kind happened, only the tie's formula changed, and the
    speaker stage stays down until the cohort is rebuilt. The refusal should say that the
    tie comes from an earlier voxgate (found in review; reproduced with the previous
    release's shipped int8 cohort and the int8 card at `hop: 80`)."""
    from voxgate.embedding import load_card

    card = load_card()
    assert card.trim is not None
    earlier = card.model_copy(update={"windowing": card.windowing.model_copy(update={"hop": 80})})
    npz = _shipped_cohort_tied_as(tmp_path, card, {"trim": card.trim.model_dump()})
    tie = cohortmod.model_sha256(SimpleNamespace(card=earlier))
    with pytest.raises(cohortmod.CohortError) as refused:
        cohortmod.for_model(card.id, npz, tie)
    said = str(refused.value).replace(str(npz), "COHORT")  # tmp_path holds this test's name
    assert "earlier" in said and "rebuild" in said, said


def test_cohort_tie_covers_the_audio_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A change at the audio boundary that alters the samples (the int16 scale, the DC
    removal's rails) moved the calibration without moving the tie, so an eval cache or a
    cohort from before it was reused silently: the path's version is in the tie."""
    from voxgate.embedding import load_card

    card = load_card()
    shipped_tie = cohortmod.model_sha256(SimpleNamespace(card=card))
    monkeypatch.setattr(cohortmod, "AUDIO_PATH_VERSION", cohortmod.AUDIO_PATH_VERSION + 1)
    tie = cohortmod.model_sha256(SimpleNamespace(card=card))
    assert tie != shipped_tie
    with pytest.raises(cohortmod.CohortError, match="preprocessing"):
        cohortmod.for_model(card.id, None, tie)


def test_a_cohort_built_before_dc_removal_is_refused_and_says_why(tmp_path: Path) -> None:
    """The audio sources remove a DC offset since 2026-11-27, which changes every embedding of
    audio that had one. A cohort built before (its tie without the `audio` entry) would score
    new embeddings against old ones: it is refused, and the refusal says what changed."""
    from voxgate.embedding import load_card

    card = load_card()
    prep = cohortmod.preprocessing(SimpleNamespace(card=card))
    assert prep is not None and prep["audio"] == {"version": 1, "dc_cutoff_hz": 4.0}
    del prep["audio"]
    npz = _shipped_cohort_tied_as(tmp_path, card, prep)
    tie = cohortmod.model_sha256(SimpleNamespace(card=card))
    with pytest.raises(cohortmod.CohortError) as refused:
        cohortmod.for_model(card.id, npz, tie)
    said = str(refused.value).replace(str(npz), "COHORT")
    assert "DC offset" in said and "rebuild it" in said, said


def _damaged_tables(doc: dict) -> dict[str, object]:
    rows = doc["calibration"]
    return {
        "list": [doc],  # a JSON list, not an object
        "no-table": {k: v for k, v in doc.items() if k != "calibration"},
        "text": {**doc, "calibration": [{"fmr": "x", "threshold": 1}]},
        "no-threshold": {**doc, "calibration": [{"fmr": 0.01}]},
        "fmr-zero": {**doc, "calibration": [*rows, {"fmr": 0.0, "threshold": 0.9}]},
        "nan": {**doc, "calibration": [{**r, "threshold": float("nan")} for r in rows]},
        "not-monotonic": {
            **doc,
            "calibration": [{"fmr": 0.1, "threshold": 0.5}, {"fmr": 0.001, "threshold": 0.2}],
        },
    }


@pytest.mark.parametrize(
    "case", ["list", "no-table", "text", "no-threshold", "fmr-zero", "nan", "not-monotonic"]
)
def test_a_damaged_calibration_table_is_refused_when_loaded(tmp_path: Path, case: str) -> None:
    """The table is read when the cohort loads (at the daemon's start), not at the first
    attempt: these used to escape as KeyError/AttributeError/ValueError tracebacks from
    `voxgate verify`, or load and then deny everyone (a NaN threshold) or fail at an
    attempt whose FMR fell next to an fmr-0 row (log of 0)."""
    path = cohortmod.save(_centered(), tmp_path)
    meta = tmp_path / "synthetic-1.0--float.json"
    meta.write_text(json.dumps(_damaged_tables(json.loads(meta.read_text()))[case]))
    with pytest.raises(cohortmod.CohortError) as err:
        cohortmod.load(path)
    assert str(meta) in str(err.value)
    assert "calibration" in str(err.value) or case == "list"


def test_a_target_beyond_the_calibration_table_is_said(
    enrolled: tuple[VoiceprintStore, Voices], caplog: pytest.LogCaptureFixture
) -> None:
    """The table ends at fmr 1e-4; a stricter target (asked for, or target_fmr / N in 1:N
    identify) gets that row's threshold. That used to happen in silence: a door configured
    for 1e-5, or identifying among more than 10 users at 1e-3, was looser than it said."""
    store, v = enrolled
    lowest = min(f for f, _ in _cohort().calibration)
    assert lowest == pytest.approx(1e-4)
    strict = _scorer(store, target_fmr=1e-5)  # said at start, not at the first attempt
    assert "target_fmr 1e-05" in caplog.text and "0.0001" in caplog.text
    assert strict.threshold(1) == _cohort().threshold_for(1e-4)
    caplog.clear()
    sc = _scorer(store, target_fmr=2e-4)
    assert not caplog.text  # 2e-4 is inside the table
    sc.identify(v.utt(1)[0])  # 3 users: 6.7e-5 per comparison, beyond the table
    sc.identify(v.utt(2)[0])
    warnings = [r for r in caplog.records if "calibrated" in r.getMessage()]
    assert len(warnings) == 1 and "3 users" in warnings[0].getMessage()  # once, not per attempt


def test_raw_cosine_only_for_a_model_without_any_cohort(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from voxgate.config import VoxgateConfig
    from voxgate.scoring import cohort_for

    custom = SimpleNamespace(model_id="custom-net/1")  # nothing shipped for it
    fixed = VoxgateConfig.model_validate({"speaker": {"threshold": 0.7}})
    assert cohort_for(fixed, custom) is None and "raw cosine" in caplog.text
    # The threshold is set: the warning must not tell the reader to set it.
    assert "set speaker.threshold" not in caplog.text and "0.7" in caplog.text
    with pytest.raises(ScoringError, match="no cohort shipped"):
        cohort_for(VoxgateConfig(), custom)  # no fixed threshold: nothing to score against
    typo = fixed.model_copy(update={"speaker": fixed.speaker.model_copy(
        update={"cohort": tmp_path / "missing.npz"})})  # fmt: skip
    with pytest.raises(ScoringError, match="cohort file missing"):
        cohort_for(typo, custom)
    path = cohortmod.save(_centered(), tmp_path)  # shipped or configured, of another model
    other = fixed.model_copy(update={"speaker": fixed.speaker.model_copy(update={"cohort": path})})
    with pytest.raises(ScoringError, match="cohort made with model"):
        cohort_for(other, custom)
