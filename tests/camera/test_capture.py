"""Auto-capture: fires after N passing frames in a row, never before; times out with the best."""
from __future__ import annotations

import pytest

from drivers.camera.capture import CAPTURE, TIMEOUT, WAIT, AutoCapture
from drivers.camera.scene import SceneParams
from station.errors import ConfigError


@pytest.fixture(scope="module")
def reports(scene, analyzer):
    """One real report per kind of frame, reused: what matters here is the sequence."""
    def analysed(params, index=0):
        image = scene.render(params, index)
        return image, analyzer.analyze(image)
    return {
        "good": [analysed(SceneParams(), i) for i in range(6)],
        "rolled": analysed(SceneParams(roll_deg=15)),
        "blurred": analysed(SceneParams(blur_sigma=3)),
        "very blurred": analysed(SceneParams(blur_sigma=5)),
        "nobody": analysed(SceneParams(faces=0)),
        "two": analysed(SceneParams(faces=2)),
    }


def test_fires_after_n_good_frames_and_not_before(reports):
    capture = AutoCapture(consecutive=5, timeout_s=10)
    t = 0.0
    for frame, report in reports["good"][:4]:
        decision = capture.feed(frame, report, t)
        assert decision.action == WAIT and not decision.done
        t += 0.033
    frame, report = reports["good"][4]
    decision = capture.feed(frame, report, t)
    assert decision.action == CAPTURE and not decision.forced
    assert decision.streak == 5 and decision.report.passed
    assert any(decision.frame is f for f, _ in reports["good"][:5])


def test_a_failing_frame_restarts_the_count(reports):
    capture = AutoCapture(consecutive=3, timeout_s=10)
    good = reports["good"]
    sequence = [good[0], good[1], reports["rolled"], good[2], good[3]]
    actions = [capture.feed(f, r, i * 0.03).action for i, (f, r) in enumerate(sequence)]
    assert actions == [WAIT] * 5
    assert capture.feed(*good[4], 0.2).action == CAPTURE


def test_timeout_returns_best_frame_flagged(reports):
    capture = AutoCapture(consecutive=5, timeout_s=1.0)
    sequence = [reports["nobody"], reports["very blurred"], reports["blurred"], reports["rolled"], reports["two"]]
    for i, (frame, report) in enumerate(sequence):
        assert capture.feed(frame, report, i * 0.1).action == WAIT
    decision = capture.feed(*reports["nobody"], 1.2)
    assert decision.action == TIMEOUT and decision.forced
    best = max((r for _, r in sequence[1:4]), key=lambda r: r.score)
    assert decision.report is best
    assert decision.frame is next(f for f, r in sequence if r is best)
    assert capture.feed(*reports["good"][0], 1.3) is decision   # settled: stays decided


def test_tick_times_out_without_frames():
    capture = AutoCapture(consecutive=5, timeout_s=2.0, started_at=10.0)
    assert capture.tick(11.0).action == WAIT
    decision = capture.tick(12.5)
    assert decision.action == TIMEOUT and decision.forced and decision.frame is None


def test_exception_mode_relaxes_pose_but_needs_one_face(reports):
    rolled_frame, rolled = reports["rolled"]
    icao = AutoCapture(consecutive=2, timeout_s=10)
    exception = AutoCapture(consecutive=2, timeout_s=10, mode="exception")
    assert not icao.acceptable(rolled) and exception.acceptable(rolled)
    assert not exception.acceptable(reports["two"][1]) and not exception.acceptable(reports["nobody"][1])
    assert not exception.acceptable(reports["very blurred"][1])      # sharpness is still required
    exception.feed(rolled_frame, rolled, 0.0)
    decision = exception.feed(rolled_frame, rolled, 0.03)
    assert decision.action == CAPTURE and not decision.forced


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError):
        AutoCapture(mode="exception", exception_ignores=["face_count"])
    with pytest.raises(ValueError):
        AutoCapture(mode="passport")
