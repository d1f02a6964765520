"""One participant completes a study through the Study tab in headless Chromium (Debian's, via Playwright)."""
from __future__ import annotations


import pytest

from pipeline.study.service import DB_FILE
from pipeline.study.store import Store

from .test_study import ready_study
from .test_study_app import serving

PLAYING = "() => [...document.querySelectorAll('video')].some(v => v.currentTime > 0 && !v.paused)"
SRC = "() => [...document.querySelectorAll('video')].map(v => v.src).join(' ')"

pytestmark = pytest.mark.slow


def rate_current(page, scores) -> None:
    """Tick one radio per question (the questions in order) and press Next."""
    for j, score in enumerate(scores):
        page.get_by_role("radio", name=f"{score} – ").nth(j).check()
    page.get_by_role("button", name="Next").click()


def test_one_participant_completes_the_study_in_chromium(browser, tmp_path):
    from playwright.sync_api import expect

    path = ready_study(tmp_path)
    with serving(path) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.goto(url + "?code=p7")
        page.get_by_role("tab", name="Study").click()
        expect(page.get_by_label("Participant code")).to_have_value("p7", timeout=30_000)  # from the link
        start = page.get_by_role("button", name="Start")
        expect(start).to_be_disabled()  # no start before consent
        page.get_by_label("I have read the above and agree to take part.").check()
        start.click()
        page.get_by_text("Video 1 of 4").wait_for(timeout=30_000)
        page.wait_for_function(PLAYING, timeout=30_000)  # autoplay after the click on Start
        first_src = page.evaluate(SRC)
        rate_current(page, [5, 4, 3, 2])
        page.get_by_text("Video 2 of 4").wait_for(timeout=30_000)
        page.wait_for_function(f"() => ({SRC})() !== {first_src!r}", timeout=30_000)

        page.reload()  # resume where the participant left off: no code typed, no consent again
        page.get_by_role("tab", name="Study").click()
        page.get_by_text("Video 2 of 4").wait_for(timeout=30_000)
        expect(page.get_by_role("radio", name="5 – ").nth(0)).not_to_be_checked()  # cleared for the new video
        page.get_by_role("button", name="Next").click()  # nothing ticked: refused, stays on video 2
        page.get_by_text("Please answer all 4 questions").first.wait_for(timeout=30_000)
        for number, scores in ((2, [1, 2, 3, 4]), (3, [3, 3, 3, 3]), (4, [2, 5, 2, 5])):
            page.get_by_text(f"Video {number} of 4").wait_for(timeout=30_000)
            rate_current(page, scores)
        page.get_by_text("Thank you! You have rated every video.").wait_for(timeout=30_000)
        expect(page.get_by_role("button", name="Next")).to_be_hidden()
        page.get_by_role("button", name="New participant").click()  # the next person at the same computer
        expect(page.get_by_role("button", name="Start")).to_be_visible()
        page.reload()
        page.get_by_role("tab", name="Study").click()
        expect(page.get_by_label("Participant code")).to_have_value("p7", timeout=30_000)  # the load has run
        expect(page.get_by_text("You have rated every video")).to_have_count(0)  # p7's finished session is not resumed
        expect(page.get_by_role("button", name="Start")).to_be_visible()
        page.close()
    rows = Store(tmp_path / DB_FILE).ratings()
    got = [[r["score"] for r in rows if r["position"] == p] for p in range(4)]
    assert got == [[5, 4, 3, 2], [1, 2, 3, 4], [3, 3, 3, 3], [2, 5, 2, 5]]
    assert {r["participant"] for r in rows} == {"p7"} and {r["client"] for r in rows} == {"chrome"}
