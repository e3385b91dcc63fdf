"""Figures: every policy in its own colour and marker in every figure, lines that coincide drawn apart
and named in the caption, a spread drawn as a band."""

import re

import pytest

from ptshare.experiments.base import Figure, Panel, Series, coincidence_note, coincident, label
from ptshare.experiments.figures import draw, style_of
from ptshare.experiments.report import caption
from ptshare.policies import POLICIES


def test_every_policy_has_a_colour_and_a_marker_of_its_own():
    colors = [cls.color for cls in POLICIES.values()]
    markers = [cls.marker for cls in POLICIES.values()]
    assert len(set(colors)) == len(colors) and len(set(markers)) == len(markers)
    for name, cls in POLICIES.items():
        assert style_of(name, 0) == style_of(label(name), 3) == (cls.color, cls.marker)


@pytest.mark.parametrize("policies", [["linux", "shared-pt"], ["eager", "lazy", "linux", "shared-pt"],
                                      ["shared-pt-2005", "linux-no-pmd-share"]])
def test_a_policy_is_drawn_in_its_colour_whatever_else_the_panel_holds(policies):
    series = [Series(label(p), [1, 2, 3], [float(n), n + 1.0, n + 3.0]) for n, p in enumerate(policies)]
    bars = [Series("time", policies, [1.0] * len(policies), "bar")]
    svg = draw(Figure("t", [Panel("lines", "x", "y", series), Panel("bars", "", "y", bars)]))
    for p in policies:
        assert svg.count(POLICIES[p].color) >= 2, p  # its line and its bar
    for p in set(POLICIES) - set(policies):
        assert POLICIES[p].color not in svg


def test_lines_that_coincide_are_named_in_the_caption_and_drawn_apart():
    same = [Series(label("lazy"), [0, 1], [1.0, 2.0]), Series(label("linux"), [0, 1], [1.0, 2.0]),
            Series(label("eager"), [0, 1], [5.0, 9.0]), Series(label("shared-pt"), [0, 1], [1.005, 2.01])]
    panel = Panel("fork", "x", "y", same)
    assert coincident(panel) == [([label("lazy"), label("linux"), label("shared-pt")], False)]
    assert coincident(Panel("fork", "x", "y", same[:3])) == [([label("lazy"), label("linux")], True)]
    figure = Figure("f", [Panel("fork", "x", "y", same[:3])], "Fork time.")
    assert caption(figure) == ("Fork time. Lazy (2.6.14) and Linux 6.18 give the same values (drawn side by "
                               "side, a few points apart).")
    assert coincidence_note(Figure("g", [Panel("p", "x", "y", same[2:3])])) == ""
    svg = draw(figure)
    lines = re.findall(r'<path d="([^"]+)"\s+clip-path="[^"]+"\s+style="fill: none; stroke: (#[0-9a-f]+)', svg)
    drawn = {color: d for d, color in lines}
    assert drawn[POLICIES["lazy"].color] != drawn[POLICIES["linux"].color]  # not one over the other


def test_a_spread_is_a_band_around_its_line():
    line = Series("hugetlb, 5 seeds", [0, 1, 2], [50.0, 60.0, 70.0], low=[40.0, 55.0, 60.0], high=[60.0, 65.0, 80.0])
    without = draw(Figure("a", [Panel("p", "x", "y", [Series("hugetlb", line.x, line.y)])]))
    svg = draw(Figure("a", [Panel("p", "x", "y", [line])]))
    assert svg.count("fill-opacity: 0.18") == 1 and without.count("fill-opacity: 0.18") == 0
