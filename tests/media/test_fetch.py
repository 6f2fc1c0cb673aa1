"""URL fetching: timeouts, size caps, redirects, and SSRF refusals for the server's policy."""
import pytest

from swiftops.media import MediaPolicy, read_media
from swiftops.media.fetch import check_url, fetch_url
from swiftops.protocol import BadRequestError
from swiftops.protocol.settings import MediaSettings

SERVER = MediaPolicy.for_server()


def test_permissive_policy_fetches_from_loopback(media_server):
    media_server.routes["/a.bin"] = (200, {}, b"hello")
    assert fetch_url(media_server.url("/a.bin"), MediaPolicy()) == b"hello"


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x.png", "http://localhost/x.png", "http://10.1.2.3/x.png", "http://192.168.0.7/x.png",
    "http://172.16.5.5/x.png", "http://169.254.169.254/latest/meta-data/", "http://[::1]/x.png",
    "http://[fe80::1]/x.png", "http://0.0.0.0/x.png", "http://[::ffff:127.0.0.1]/x.png", "http://100.64.0.1/x.png",
])
def test_server_policy_refuses_non_public_targets(url):
    with pytest.raises(BadRequestError, match="non-public") as info:
        check_url(url, SERVER)
    assert info.value.code == "media_url_forbidden"


def test_server_policy_refuses_loopback_before_connecting(media_server):
    media_server.routes["/a.bin"] = (200, {}, b"secret")
    with pytest.raises(BadRequestError, match="non-public"):
        read_media(media_server.url("/a.bin"), SERVER)


def test_allowed_media_domains_lets_a_private_host_through(media_server):
    media_server.routes["/a.bin"] = (200, {}, b"ok")
    policy = MediaPolicy.for_server(MediaSettings(allowed_media_domains=["127.0.0.1"]))
    assert fetch_url(media_server.url("/a.bin"), policy) == b"ok"
    assert MediaPolicy.for_server(MediaSettings(allowed_media_domains=["example.com"])).host_allowed("img.example.com")
    assert not MediaPolicy.for_server(MediaSettings(allowed_media_domains=["example.com"])).host_allowed("badexample.com")


def test_redirect_to_a_private_address_is_refused(media_server):
    # The first hop's host is allowed ("localhost"); the redirect's (127.0.0.1) is not.
    port = media_server.server_address[1]
    media_server.routes["/go"] = (302, {"Location": f"http://127.0.0.1:{port}/secret"}, b"")
    media_server.routes["/secret"] = (200, {}, b"secret")
    policy = MediaPolicy.for_server(MediaSettings(allowed_media_domains=["localhost"]))
    with pytest.raises(BadRequestError, match="non-public"):
        fetch_url(f"http://localhost:{port}/go", policy)


def test_redirects_are_followed_when_allowed_and_bounded(media_server):
    media_server.routes["/one"] = (302, {"Location": "/two"}, b"")
    media_server.routes["/two"] = (301, {"Location": "/data"}, b"")
    media_server.routes["/data"] = (200, {}, b"payload")
    assert fetch_url(media_server.url("/one"), MediaPolicy()) == b"payload"
    media_server.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    with pytest.raises(BadRequestError, match="redirects"):
        fetch_url(media_server.url("/loop"), MediaPolicy(max_redirects=3))


def test_size_cap_on_declared_and_undeclared_lengths(media_server):
    media_server.routes["/big"] = (200, {}, b"x" * 5000)
    with pytest.raises(BadRequestError, match="limit"):
        fetch_url(media_server.url("/big"), MediaPolicy(max_bytes=1000))
    # A server that sends no Content-Length (connection-close body) is cut off while reading.
    media_server.routes["/sneaky"] = (200, {"X-No-Length": "1"}, b"y" * 10)
    with pytest.raises(BadRequestError, match="limit"):
        fetch_url(media_server.url("/sneaky"), MediaPolicy(max_bytes=5))


def test_timeout_is_a_400(media_server):
    media_server.routes["/slow"] = (200, {}, 2.0)
    with pytest.raises(BadRequestError, match="timed out"):
        fetch_url(media_server.url("/slow"), MediaPolicy(timeout=0.3))


def test_http_errors_and_other_schemes(media_server):
    with pytest.raises(BadRequestError, match="HTTP 404"):
        fetch_url(media_server.url("/missing"), MediaPolicy())
    with pytest.raises(BadRequestError, match="scheme .ftp. is not allowed"):
        check_url("ftp://example.com/x.png", SERVER)
