import pytest

from pipeline.crawl.urls import InvalidUrl, domain_of, normalize_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTP://Example.COM/a.jpg", "http://example.com/a.jpg"),
        ("http://example.com:80/a.jpg", "http://example.com/a.jpg"),
        ("https://example.com:443/a.jpg", "https://example.com/a.jpg"),
        ("https://example.com:8443/a.jpg", "https://example.com:8443/a.jpg"),
        ("http://example.com/a.jpg#section", "http://example.com/a.jpg"),
        ("http://example.com", "http://example.com/"),
        ("  http://example.com/a b.jpg ", "http://example.com/a%20b.jpg"),
        (
            "http://example.com/a%20b.jpg",
            "http://example.com/a%20b.jpg",
        ),  # already encoded: untouched
        ("http://example.com/img?w=100&h=50", "http://example.com/img?w=100&h=50"),
        ("http://bücher.example/x.jpg", "http://xn--bcher-kva.example/x.jpg"),
        ("http://[::1]:8080/x.jpg", "http://[::1]:8080/x.jpg"),
        ("http://user:pw@Example.com/x.jpg", "http://user:pw@example.com/x.jpg"),
    ],
)
def test_normalize_url(url, expected):
    assert normalize_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (None, "missing_url"),
        ("   ", "missing_url"),
        ("ftp://example.com/a.jpg", "bad_scheme"),
        ("data:image/png;base64,AAAA", "bad_scheme"),
        ("example.com/a.jpg", "bad_scheme"),
        ("http://[::1/a.jpg", "unparsable_url"),
        ("http://example.com:99999/a.jpg", "unparsable_url"),
        ("http:///a.jpg", "unparsable_url"),
        ("http://example.com/" + "a" * 3000, "url_too_long"),
    ],
)
def test_invalid_urls_carry_a_reason(url, reason):
    with pytest.raises(InvalidUrl) as e:
        normalize_url(url)
    assert e.value.reason == reason


def test_domain_of():
    assert domain_of("https://Img.Example.com:8080/x") == "img.example.com"
    assert domain_of("not a url") == ""
