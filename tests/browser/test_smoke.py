from conftest import shot


def test_every_page_is_served_from_this_origin_only(page, service):
    for path in ("/", "/login", "/register", "/sales/00000000-0000-0000-0000-000000000000",
                 "/console"):
        res = page.goto(path)
        assert res.status == 200
        csp = res.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "script-src 'self';" in csp
    shot(page, "smoke")
