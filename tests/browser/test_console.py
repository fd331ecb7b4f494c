"""The organizer's console (/console) in a real browser, against the real API
and workers: an organizer creates a sale in the form, follows buyers
arriving, steers the release and closes the sale, each change checked
through the API itself; another organizer can neither see nor steer it;
buyers and visitors are turned away."""

import json
import re
import time
import uuid
from pathlib import Path

from playwright.sync_api import expect

from conftest import shot

# Outcomes the workers bring about (an admission, a reconciliation) come
# within a few release ticks; the bound only caps a failing test's wait.
WORKERS = 30_000


def forgive(page, *statuses):
    """Chromium logs every 4xx a fetch gets as a console error; a refusal
    the test asked for is not a fault of the page."""
    page.watched.errors[:] = [
        e for e in page.watched.errors
        if not any(f"status of {s} " in e for s in statuses)
    ]


def sign_in(page, email, password):
    """Signs in with the session cookie, as the console's own fetch
    wrapper would, and loads the console again, signed in; returns the
    account's user id."""
    page.goto("/console")
    res = page.evaluate(
        """async ([email, password]) => {
            const r = await fetch("/v1/auth/session", {
                method: "POST",
                credentials: "same-origin",
                headers: {"content-type": "application/json", "x-flashsale-csrf": "1"},
                body: JSON.stringify({email, password}),
            });
            return {status: r.status, body: await r.json()};
        }""",
        [email, password],
    )
    assert res["status"] == 200, res
    # The visit before signing in was told 401 by /v1/me.
    forgive(page, 401)
    page.reload()
    return res["body"]["user_id"]


def sale_of(service, sale_id):
    status, sale = service.call("GET", f"/v1/sales/{sale_id}")
    assert status == 200, sale
    return sale


def until(check, what, timeout_s=WORKERS / 1000):
    """Polls `check` until it returns a true value (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.2)


def create_in_form(page, name, **settings):
    """Fills the new-sale form (one zone, A) and sends it; returns the id
    of the sale the console then shows."""
    form = page.get_by_test_id("create-sale")
    page.locator("#sale-name").fill(name)
    page.locator("#zone-0-code").fill("A")
    page.locator("#zone-0-name").fill("Floor")
    page.locator("#zone-0-capacity").fill("100")
    page.locator("#zone-0-price").fill("25.50")
    if settings:
        form.get_by_text("Release settings").click()
        for key, value in settings.items():
            page.locator(f"#new-{key.replace('_', '-')}").fill(str(value))
    page.get_by_test_id("create-sale-submit").click()
    expect(page.get_by_test_id("sale-waiting")).to_be_visible()
    return page.evaluate("location.hash.slice(1)")


def test_an_organizer_creates_follows_steers_and_closes_a_sale(desktop, service):
    page = desktop
    email, password = service.account("organizer")
    sign_in(page, email, password)
    expect(page.get_by_test_id("create-sale")).to_be_visible()

    # A refusal from the API is shown next to the field it names, and
    # nothing is created.
    name = f"Console tour {uuid.uuid4().hex[:6]}"
    page.locator("#sale-name").fill(name)
    page.locator("#zone-0-code").fill("A")
    page.locator("#zone-0-capacity").fill("0")
    page.get_by_test_id("create-sale-submit").click()
    expect(page.locator("#zone-0-capacity-error")).to_contain_text(
        "zones[0].capacity must be between 1")
    forgive(page, 422)
    expect(page.get_by_test_id("sales-list")).not_to_contain_text(name)

    # One buyer active at a time, with turns long enough to outlast the test.
    sale_id = create_in_form(page, name, max_active=1, pass_ttl_seconds=3600,
                             admit_idle_seconds=3600)
    expect(page.get_by_test_id("sales-list")).to_contain_text(name)
    sale = sale_of(service, sale_id)
    assert sale["name"] == name
    assert sale["max_active"] == 1
    assert sale["zones"] == [{"code": "A", "name": "Floor", "capacity": 100,
                              "price_cents": 2550, "available": 100}]
    expect(page.get_by_test_id("sale-state")).to_have_text("Open")

    # Buyers arrive: one is admitted, two wait.
    buyers = [service.token(f"console-buyer-{uuid.uuid4().hex[:8]}") for _ in range(3)]
    for token in buyers:
        status, _ = service.call("POST", f"/v1/sales/{sale_id}/queue", token=token)
        assert status == 202
    expect(page.get_by_test_id("sale-waiting")).to_have_text("2", timeout=WORKERS)
    expect(page.get_by_test_id("sale-admitted")).to_have_text("1")
    expect(page.get_by_test_id("sale-active")).to_contain_text("1 active now (max 1)")
    expect(page.get_by_test_id("sale-rate")).to_have_text(re.compile(r"^[\d.,]+/s$"))
    expect(page.get_by_test_id("sale-release-rate")).to_have_text("configured 100/s")

    # The release rate.
    page.get_by_test_id("release-rate").fill("250")
    page.get_by_test_id("release-rate-apply").click()
    until(lambda: sale_of(service, sale_id)["release_rate"] == 250, "the new rate")
    expect(page.get_by_test_id("sale-release-rate")).to_have_text("configured 250/s")
    expect(page.get_by_test_id("audit-log")).to_contain_text("release rate 100 → 250")
    # The API's own check refuses a rate out of range, next to the control.
    page.get_by_test_id("release-rate").fill("0")
    page.get_by_test_id("release-rate-apply").click()
    expect(page.get_by_test_id("release-rate-error")).to_contain_text(
        "release_rate must be between 1 and 100000")
    forgive(page, 422)
    assert sale_of(service, sale_id)["release_rate"] == 250
    # Sending the rate in force again clears the refusal (and, changing
    # nothing, adds nothing to the audit log).
    page.get_by_test_id("release-rate").fill("250")
    with page.expect_response(lambda r: r.request.method == "PATCH") as answer:
        page.get_by_test_id("release-rate-apply").click()
    assert answer.value.status == 200
    expect(page.get_by_test_id("release-rate-error")).to_be_hidden()

    # More buyers at once: the two waiting are admitted.
    page.get_by_test_id("max-active").fill("3")
    page.get_by_test_id("max-active-apply").click()
    until(lambda: sale_of(service, sale_id)["max_active"] == 3, "the new cap")
    expect(page.get_by_test_id("sale-waiting")).to_have_text("0", timeout=WORKERS)
    expect(page.get_by_test_id("sale-admitted")).to_have_text("3")

    # The other live settings: only what was edited is sent.
    page.get_by_test_id("more-settings").get_by_text("More settings").click()
    expect(page.get_by_label("Release interval")).to_have_value("1000")
    page.get_by_label("Release interval").fill("500")
    page.get_by_test_id("settings-apply").click()
    until(lambda: sale_of(service, sale_id)["release_interval_ms"] == 500, "the new interval")
    page.get_by_test_id("more-settings").get_by_text("More settings").click()

    # A buyer holds and buys two tickets: the stock follows.
    standing = {}
    for token in buyers:
        standing[token] = service.call("GET", f"/v1/sales/{sale_id}/queue", token=token)[1]
    token = next(t for t, s in standing.items() if s["state"] == "admitted")
    status, held = service.call("POST", f"/v1/sales/{sale_id}/reservations",
                                {"zone": "A", "quantity": 2}, token=token,
                                headers={"x-queue-pass": standing[token]["pass"]})
    assert status == 201, held
    expect(page.get_by_test_id("zone-stock-A")).to_have_text("98 of 100", timeout=WORKERS)
    expect(page.get_by_test_id("zone-held-A")).to_have_text("2")
    status, _ = service.call("POST", f"/v1/reservations/{held['id']}/confirm", {}, token=token)
    assert status == 200
    expect(page.get_by_test_id("zone-confirmed-A")).to_have_text("2", timeout=WORKERS)
    expect(page.get_by_test_id("zone-held-A")).to_have_text("0")
    expect(page.get_by_test_id("zone-persisted-A")).to_have_text("2", timeout=WORKERS)
    expect(page.get_by_test_id("drift")).to_have_text("0", timeout=WORKERS)
    expect(page.get_by_test_id("reconciled-at")).to_contain_text("reconciled")

    # Pause and resume.
    page.get_by_test_id("pause").click()
    until(lambda: sale_of(service, sale_id)["state"] == "paused", "paused")
    expect(page.get_by_test_id("sale-state")).to_have_text("Paused")
    page.get_by_test_id("resume").click()
    until(lambda: sale_of(service, sale_id)["state"] == "open", "resumed")
    expect(page.get_by_test_id("pause")).to_be_visible()

    # Closing asks first; keeping it open changes nothing.
    page.get_by_test_id("close-sale").click()
    page.get_by_test_id("close-sale-cancel").click()
    expect(page.get_by_test_id("close-sale-confirm")).to_be_hidden()
    assert sale_of(service, sale_id)["state"] == "open"
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "console-desktop")
    page.get_by_test_id("close-sale").click()
    page.get_by_test_id("close-sale-confirm").click()
    until(lambda: sale_of(service, sale_id)["state"] == "closed", "closed")
    expect(page.get_by_test_id("sale-state")).to_have_text("Closed")
    expect(page.get_by_test_id("close-sale")).to_be_hidden()
    expect(page.get_by_test_id("pause")).to_be_hidden()

    # Every change is in the audit log, newest first.
    entries = page.get_by_test_id("audit-entry")
    expect(entries).to_have_count(6)
    expect(entries.nth(0)).to_contain_text("closes none →")
    expect(entries.nth(1)).to_contain_text("paused yes → no")
    expect(entries.nth(2)).to_contain_text("paused no → yes")
    expect(entries.nth(3)).to_have_text(re.compile(r"release interval \(ms\) 1,?000 → 500$"))
    expect(entries.nth(4)).to_contain_text("max active 1 → 3")
    expect(entries.nth(5)).to_contain_text("release rate 100 → 250")

    # The exports are downloads of the API's own answers.
    with page.expect_download() as info:
        page.get_by_test_id("attendees-export").click()
    csv = Path(info.value.path()).read_bytes().decode()
    assert info.value.suggested_filename == f"attendees-{sale_id}.csv"
    assert csv.startswith("reservation_id,user_id,zone,quantity,confirmed_at,payment_ref\r\n")
    assert f"{held['id']}," in csv
    with page.expect_download() as info:
        page.get_by_test_id("prequeue-export").click()
    export = json.loads(Path(info.value.path()).read_text())
    assert info.value.suggested_filename == f"prequeue-{sale_id}.json"
    assert export["sale_id"] == sale_id
    assert export["seed_sha256"] == sale["prequeue_seed_sha256"]


def test_on_a_phone_the_list_stacks_above_the_sale_and_on_a_desktop_beside_it(
        page, new_context, service):
    email, password = service.account("organizer")
    user_id = sign_in(page, email, password)
    # A sale that opens in an hour: its pre-queue seed is still secret.
    status, sale = service.call("POST", "/v1/sales", {
        "name": "Opening later", "opens_at": "2099-01-01T10:00:00Z",
        "zones": [{"code": "VIP", "capacity": 20, "price_cents": 9900}],
    }, token=service.token(user_id, "organizer"))
    assert status == 201, sale
    page.goto(f"/console#{sale['id']}")
    expect(page.get_by_test_id("sale-state")).to_have_text("Scheduled")
    expect(page.get_by_test_id("zone-stock-VIP")).to_have_text("20 of 20")
    expect(page.get_by_test_id("prequeue-commitment")).to_have_text(sale["prequeue_seed_sha256"])
    expect(page.get_by_test_id("prequeue-export")).to_be_hidden()
    # Made after the list was read, it is listed once opened.
    expect(page.get_by_test_id("sales-list")).to_contain_text("Opening later")

    listing = page.get_by_test_id("sales-list").bounding_box()
    figures = page.get_by_test_id("sale-detail").bounding_box()
    assert listing["y"] + listing["height"] <= figures["y"], "stacked on a phone"
    assert page.evaluate("document.documentElement.scrollWidth") <= 360, "nothing wider than the phone"
    shot(page, "console-phone")

    wide = new_context({"width": 1280, "height": 860})
    sign_in(wide, email, password)
    wide.goto(f"/console#{sale['id']}")
    expect(wide.get_by_test_id("zone-stock-VIP")).to_have_text("20 of 20")
    listing = wide.get_by_test_id("sales-list").bounding_box()
    figures = wide.get_by_test_id("sale-detail").bounding_box()
    assert listing["x"] + listing["width"] <= figures["x"], "side by side on a desktop"


def test_another_organizer_can_neither_see_nor_steer_the_sale(page, service):
    owner = service.token(f"organizer-{uuid.uuid4().hex[:8]}", "organizer")
    status, sale = service.call("POST", "/v1/sales", {
        "name": f"Not yours {uuid.uuid4().hex[:6]}",
        "zones": [{"code": "A", "capacity": 10}],
    }, token=owner)
    assert status == 201, sale

    email, password = service.account("organizer")
    sign_in(page, email, password)
    expect(page.get_by_test_id("sales-list")).to_be_visible()
    expect(page.get_by_test_id("sales-list")).not_to_contain_text(sale["name"])

    # Opened by its address, the sale is refused, and no control is shown.
    page.goto(f"/console#{sale['id']}")
    expect(page.get_by_test_id("sale-problem")).to_contain_text("only the sale's organizer")
    expect(page.get_by_test_id("pause")).to_have_count(0)
    expect(page.get_by_test_id("release-rate")).to_have_count(0)

    # A PATCH forged through the page's own session is refused by the API.
    res = page.evaluate(
        """async (id) => {
            const r = await fetch(`/v1/sales/${id}`, {
                method: "PATCH",
                credentials: "same-origin",
                headers: {"content-type": "application/json", "x-flashsale-csrf": "1"},
                body: JSON.stringify({paused: true, release_rate: 1}),
            });
            return {status: r.status, body: await r.json()};
        }""",
        sale["id"],
    )
    assert res["status"] == 403
    assert res["body"]["code"] == "forbidden"
    forgive(page, 403)
    after = sale_of(service, sale["id"])
    assert after["paused"] is False
    assert after["release_rate"] == sale["release_rate"]


def test_a_buyer_is_told_organizers_only_and_a_visitor_is_sent_to_sign_in(
        page, new_context, service):
    page.goto("/console")
    link = page.get_by_test_id("sign-in")
    expect(link).to_have_attribute("href", "/login?next=/console")
    expect(page.get_by_test_id("create-sale")).to_have_count(0)
    forgive(page, 401)

    buyer = new_context()
    email, password = service.account("buyer")
    sign_in(buyer, email, password)
    expect(buyer.get_by_test_id("organizers-only")).to_contain_text("organizers only")
    expect(buyer.get_by_test_id("sales-list")).to_have_count(0)
    expect(buyer.get_by_test_id("create-sale")).to_have_count(0)
