"""robots.txt read per RFC 9309: the examples of the RFC written out, the matching rules
(`*`, `$`, longest match, Allow on a tie, user-agent groups), and a crawl over a loopback
server whose robots.txt disallows every .jpg with a wildcard rule."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.crawl.hosts import RobotsRules, robots_from_response
from pipeline.jobs.curate import main
from schemas import Stats

# RFC 9309, 5.1 "Simple Example", verbatim (the figure ends with the line "EOF").
RFC_5_1 = """\
User-Agent: *
Disallow: *.gif$
Disallow: /example/
Allow: /publications/

User-Agent: foobot
Disallow:/
Allow:/example/page.html
Allow:/example/allowed.gif

User-Agent: barbot
User-Agent: bazbot
Disallow: /example/page.html

User-Agent: quxbot

EOF
"""

# RFC 9309, 5.2 "Longest Match", verbatim.
RFC_5_2 = """\
User-Agent: foobot
Allow: /example/page/
Disallow: /example/page/disallowed.gif
"""


def allowed(robots: str, path: str, token: str = "webpairs") -> bool:
    return RobotsRules.parse(robots).allowed("https://www.example.com" + path, token)


@pytest.mark.parametrize(
    ("token", "path", "expected"),
    [
        # `*`: any crawler without a group of its own
        ("otherbot", "/pictures/cat.gif", False),  # Disallow: *.gif$
        ("otherbot", "/pictures/cat.gif?size=2", True),  # `$`: the path must end in .gif
        ("otherbot", "/example/page.html", False),  # Disallow: /example/
        ("otherbot", "/publications/report.gif", True),  # Allow: /publications/ is longer
        ("otherbot", "/elsewhere.html", True),
        # foobot: everything disallowed except the two allowed paths; no `*` rules inherited
        ("foobot", "/", False),
        ("foobot", "/elsewhere.html", False),
        ("foobot", "/example/page.html", True),
        ("foobot", "/example/allowed.gif", True),
        ("foobot", "/example/other.html", False),
        # barbot and bazbot share one group: only /example/page.html is disallowed
        ("barbot", "/example/page.html", False),
        ("bazbot", "/example/page.html", False),
        ("bazbot", "/example/other.html", True),
        ("bazbot", "/pictures/cat.gif", True),
        # quxbot's group has no rules: everything allowed, `*` does not apply
        ("quxbot", "/example/page.html", True),
        ("quxbot", "/pictures/cat.gif", True),
    ],
)
def test_rfc_9309_simple_example(token, path, expected):
    assert allowed(RFC_5_1, path, token) is expected


def test_rfc_9309_longest_match_example():
    assert allowed(RFC_5_2, "/example/page/", "foobot")
    assert allowed(RFC_5_2, "/example/page/index.html", "foobot")
    assert not allowed(RFC_5_2, "/example/page/disallowed.gif", "foobot")


@pytest.mark.parametrize(
    ("rules", "path", "expected"),
    [
        # RFC 9309, 2.2.3: `$` ends the pattern, `*` is any run of characters (`/` too),
        # %2A and %24 match a literal `*` and `$`, `#` starts a comment
        ("Disallow: /this/path/exactly$", "/this/path/exactly", False),
        ("Disallow: /this/path/exactly$", "/this/path/exactly/more", True),
        ("Disallow: /this/*/exactly", "/this/a/b/exactly", False),
        ("Disallow: /this/*/exactly", "/this/exactly", True),
        ("Disallow: /path/file-with-a-%2A.html", "/path/file-with-a-*.html", False),
        ("Disallow: /path/file-with-a-%2A.html", "/path/file-with-a-x.html", True),
        ("Disallow: /path/foo-%24", "/path/foo-$", False),
        ("Disallow: /path/foo-%24", "/path/foo-", True),
        ("Disallow: /a # not /ab\n# Disallow: /", "/a/x.jpg", False),
        ("Disallow: /a # not /ab\n# Disallow: /", "/b", True),
        # the case that urllib.robotparser gets wrong: a wildcard rule in a path
        ("Disallow: /*.jpg$", "/a/b.jpg", False),
        ("Disallow: /*.jpg$", "/b.jpg", False),
        ("Disallow: /*.jpg$", "/a/b.jpg?w=200", True),
        ("Disallow: /*.jpg$", "/a/b.png", True),
        # 2.2.2: the most specific (longest) match wins, whatever the order of the lines
        ("Disallow: /example/\nAllow: /example/page.html", "/example/page.html", True),
        ("Allow: /example/page.html\nDisallow: /example/", "/example/page.html", True),
        ("Allow: /example/\nDisallow: /example/*.jpg", "/example/a.jpg", False),
        ("Disallow: /*.jpg\nAllow: /public/", "/public/a.jpg", True),
        # 2.2.2: an Allow and a Disallow of the same length: the least restrictive, Allow
        ("Disallow: /page\nAllow: /page", "/page", True),
        ("Allow: /page\nDisallow: /page", "/page", True),
        ("Disallow: /p*e\nAllow: /page", "/page", True),
        ("Allow: /page\nDisallow: /p*e", "/page", True),
        # no rule matches: allowed; an empty Disallow disallows nothing
        ("Disallow: /private/", "/public/a.jpg", True),
        ("Disallow:", "/anything.jpg", True),
    ],
)
def test_path_matching(rules, path, expected):
    assert allowed(f"User-agent: *\n{rules}\n", path) is expected


def test_a_group_applies_to_its_token_case_insensitively():
    robots = "User-agent: WebPairs\nDisallow: /\n\nUser-agent: *\nDisallow:\n"
    assert not allowed(robots, "/a.jpg", "webpairs")
    assert allowed(robots, "/a.jpg", "otherbot")


def test_a_group_named_by_a_prefix_of_the_token_does_not_apply():
    # "web" is another crawler's product token, not ours: the `*` group applies
    robots = "User-agent: web\nAllow: /\n\nUser-agent: *\nDisallow: /\n"
    assert not allowed(robots, "/a.jpg", "webpairs")
    assert allowed(robots, "/a.jpg", "web")
    robots = "User-agent: web\nDisallow: /\n"
    assert allowed(robots, "/a.jpg", "webpairs")


def test_groups_naming_the_same_token_are_combined():
    robots = (
        "User-agent: webpairs\nDisallow: /a/\n\n"
        "User-agent: otherbot\nDisallow: /\n\n"
        "User-agent: webpairs\nDisallow: /b/\n"
    )
    assert not allowed(robots, "/a/1.jpg")
    assert not allowed(robots, "/b/1.jpg")
    assert allowed(robots, "/c/1.jpg")


def test_response_status_decides_before_any_rule():
    # 2xx: the rules (a UTF-8 byte order mark does not hide the first group)
    rules, _ = robots_from_response(200, b"\xef\xbb\xbfUser-agent: *\nDisallow: /*.jpg$\n")
    assert not rules.allowed("http://h/a.jpg", "webpairs")
    assert robots_from_response(404, None) == (None, True)  # 4xx: no robots.txt, all allowed
    assert robots_from_response(500, None) == (None, False)  # 5xx: all disallowed
    assert robots_from_response(None, None) == (None, False)  # unreachable: all disallowed


def test_crawl_refuses_wildcard_disallowed_images_as_a_counted_failure(site, tmp_path):
    site.robots = "User-agent: *\nDisallow: /*.jpg$\n"
    refused = ["/img/coffee.jpg", "/img/chelsea.jpg"]
    fetched = ["/img/astronaut.png", "/img/rocket.webp", "/img/china.jpg?w=640"]
    pq.write_table(
        pa.Table.from_pylist([{"url": site.url(p), "caption": p} for p in refused + fetched]),
        tmp_path / "urls.parquet",
    )
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "urls.parquet"), "--output", str(out)]
    assert main([*args, "--allow-networks", "127.0.0.1/32", "--recipe", "none", "--robots"]) == 0

    stats = Stats.from_json((out / "stats.json").read_text())
    assert stats.failed == {"robots_disallowed": len(refused)}
    assert stats.written == len(fetched)
    assert not set(refused) & set(site.hits)  # refused before any request for the image
    assert site.hits["/robots.txt"] >= 1
