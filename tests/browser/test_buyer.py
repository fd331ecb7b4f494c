"""The buyer's pages in a real browser: the sales list, registering and
signing in, and a sale's page through every step (countdown, pre-queue,
line, admission, hold, confirmation, ticket), its waitlisted and sold-out
states, leaving the line, and a lost connection. Each state is
photographed, phone and desktop, into target/screenshots/."""

import re
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from playwright.sync_api import expect

from conftest import DESKTOP, PHONE, shot

NARROW = {"width": 320, "height": 640}
DEVICES = {"phone": PHONE, "desktop": DESKTOP}


def rfc3339(at):
    return at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def organizer(service):
    return service.token(f"organizer-{uuid.uuid4().hex[:8]}", "organizer")


def make_sale(service, token=None, opens_in=None, zones=None, **settings):
    """A sale made through the API; `opens_in` seconds from now (else open now)."""
    body = {
        "name": settings.pop("name", f"Night Train Live {uuid.uuid4().hex[:4]}"),
        "zones": zones or [
            {"code": "FLOOR", "name": "Floor", "capacity": 50, "price_cents": 4500},
            {"code": "BALC", "name": "Balcony", "capacity": 20, "price_cents": 7900},
        ],
        "release_rate": 50,
        "release_interval_ms": 250,
        "per_user_limit": 4,
        **settings,
    }
    if opens_in is not None:
        body["opens_at"] = rfc3339(datetime.now(timezone.utc) + timedelta(seconds=opens_in))
    status, sale = service.call("POST", "/v1/sales", body, token=token or organizer(service))
    assert status == 201, sale
    return sale


def no_sideways_scroll(page):
    width = page.evaluate("document.scrollingElement.scrollWidth")
    viewport = page.viewport_size["width"]
    assert width <= viewport, f"{page.url} scrolls sideways at {viewport} px: {width} px wide"


def sign_in(page, email, password, next_path):
    page.goto(f"/login?next={next_path}")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_test_id("submit").click()
    page.wait_for_url(f"**{next_path}")


def wait_for(what, check, seconds=30):
    """Polls `check` until it returns something truthy, for a bounded time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {seconds} s")


def my_queue(page, sale_id):
    """The signed-in buyer's standing, as the API tells this browser."""
    return page.evaluate(
        """async (id) => {
            const r = await fetch(`/v1/sales/${id}/queue`);
            return {status: r.status, body: await r.json()};
        }""",
        sale_id,
    )


@pytest.mark.parametrize("device", ["phone", "desktop", "narrow"])
def test_a_buyer_registers_waits_for_opening_holds_confirms_and_keeps_the_ticket(
    new_context, service, device
):
    page = new_context({**DEVICES, "narrow": NARROW}[device])
    email = f"fan-{uuid.uuid4().hex[:8]}@example.com"
    password = "a long enough passphrase"

    # Register (which signs in) and sign out again.
    page.goto("/register?next=/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_test_id("submit").click()
    page.wait_for_url("**/login")
    page.get_by_test_id("sign-out").click()
    page.wait_for_url(lambda url: url.endswith("/"))

    # A sale opening shortly. Not signed in, its page shows the countdown
    # and a way to sign in that comes back here.
    sale = make_sale(service, opens_in=12, name="Summer Tour – Berlin")
    here = f"/sales/{sale['id']}"
    page.goto(here)
    expect(page.get_by_role("heading", name="Summer Tour – Berlin")).to_be_visible()
    expect(page.get_by_test_id("countdown")).to_be_visible()
    page.get_by_test_id("sign-in-link").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_test_id("submit").click()
    page.wait_for_url(f"**{here}")

    # Before opening: the countdown and the pre-queue.
    expect(page.get_by_test_id("countdown")).to_be_visible()
    expect(page.get_by_test_id("join")).to_have_text("Join the pre-queue")
    shot(page, f"buyer-countdown-{device}")
    no_sideways_scroll(page)
    page.get_by_test_id("join").click()
    expect(page.get_by_test_id("queue-state")).to_have_text("In the pre-queue")
    expect(page.get_by_test_id("queue-position")).to_have_text("1")
    expect(page.get_by_test_id("queue-eta")).to_contain_text("about")
    expect(page.get_by_role("progressbar")).to_be_visible()
    shot(page, f"buyer-queue-{device}")
    no_sideways_scroll(page)

    # A reload keeps the place: it is the server's.
    page.reload()
    expect(page.get_by_test_id("queue-state")).to_be_visible()
    expect(page.get_by_test_id("queue-position")).to_have_text("1")
    assert my_queue(page, sale["id"])["body"]["state"] == "waiting"

    # At opening the line moves and the buyer is let in to choose.
    expect(page.get_by_test_id("hold")).to_be_visible(timeout=30_000)
    expect(page.get_by_test_id("zone-FLOOR")).to_contain_text("50 left")
    expect(page.get_by_test_id("zone-BALC")).to_contain_text("20 left")
    shot(page, f"buyer-zones-{device}")
    no_sideways_scroll(page)

    # Another buyer's hold shows up in the availability while choosing.
    other = service.token(f"other-{uuid.uuid4().hex[:8]}")
    service.call("POST", f"/v1/sales/{sale['id']}/queue", token=other)
    admitted = wait_for("the other buyer's admission", lambda: (
        (s := service.call("GET", f"/v1/sales/{sale['id']}/queue", token=other)[1])
        and s.get("state") == "admitted" and s))
    status, _ = service.call("POST", f"/v1/sales/{sale['id']}/reservations",
                             {"zone": "BALC", "quantity": 3}, token=other,
                             headers={"x-queue-pass": admitted["pass"]})
    assert status == 201
    expect(page.get_by_test_id("zone-BALC")).to_contain_text("17 left", timeout=15_000)

    # Quantities go up to the per-user limit.
    options = page.get_by_test_id("quantity").locator("option").all_inner_texts()
    assert options == ["1", "2", "3", "4"]
    page.get_by_test_id("zone-FLOOR").click()
    page.get_by_test_id("quantity").select_option("2")
    page.get_by_test_id("hold").click()
    expect(page.get_by_test_id("hold-expires")).to_have_text(re.compile(r"^\d+:\d\d$"))
    expect(page.get_by_test_id("held")).to_contain_text("2 × Floor")
    shot(page, f"buyer-hold-{device}")
    no_sideways_scroll(page)

    # A reload keeps the hold and its countdown.
    page.reload()
    expect(page.get_by_test_id("hold-expires")).to_have_text(re.compile(r"^\d+:\d\d$"))
    expect(page.get_by_test_id("held")).to_contain_text("2 × Floor")

    page.get_by_test_id("confirm").click()
    ticket = page.get_by_test_id("ticket")
    expect(ticket).to_contain_text("2 × Floor")
    reservation = page.get_by_test_id("ticket-id").inner_text()
    assert len(reservation) >= 48
    shot(page, f"buyer-ticket-{device}")
    no_sideways_scroll(page)

    # The sink writes the confirmation to Postgres.
    row = wait_for("the reservation's row in Postgres", lambda: service.psql(
        f"select zone_code, quantity, status from reservations where id = '{reservation}'"))
    assert row == "FLOOR|2|confirmed"

    # And the ticket is still there after a reload.
    page.reload()
    expect(page.get_by_test_id("ticket-id")).to_have_text(reservation)


def test_a_second_buyer_is_waitlisted_while_the_last_ticket_is_held_then_sees_sold_out(
    new_context, service
):
    sale = make_sale(service, name="Tiny Room",
                     zones=[{"code": "GA", "name": "Standing", "capacity": 1, "price_cents": 2500}])
    base = f"/v1/sales/{sale['id']}"

    # Buyer A (an API client) holds the only ticket.
    a = service.token(f"a-{uuid.uuid4().hex[:8]}")
    service.call("POST", f"{base}/queue", token=a)
    admitted = wait_for("A's admission", lambda: (
        (s := service.call("GET", f"{base}/queue", token=a)[1])
        and s.get("state") == "admitted" and s))
    status, held = service.call("POST", f"{base}/reservations", {"zone": "GA", "quantity": 1},
                                token=a, headers={"x-queue-pass": admitted["pass"]})
    assert status == 201, held

    # Buyers B and C, in browsers, join: every ticket is held, so they are
    # waitlisted, not let in.
    pages = {}
    for device, viewport in DEVICES.items():
        page = new_context(viewport)
        email, password = service.account()
        sign_in(page, email, password, f"/sales/{sale['id']}")
        page.get_by_test_id("join").click()
        expect(page.get_by_test_id("waitlisted")).to_be_visible(timeout=20_000)
        expect(page.get_by_test_id("queue-state")).to_have_text("Waitlisted")
        expect(page.get_by_test_id("zone-GA")).to_have_count(0)
        shot(page, f"buyer-waitlisted-{device}")
        pages[device] = page

    # A confirms: every ticket is sold, and the waitlist is told so.
    status, _ = service.call("POST", f"/v1/reservations/{held['id']}/confirm", token=a)
    assert status == 200
    for device, page in pages.items():
        expect(page.get_by_test_id("sold-out")).to_contain_text("Sold out", timeout=30_000)
        expect(page.get_by_test_id("join")).to_have_count(0)
        shot(page, f"buyer-sold-out-{device}")


def test_a_hold_is_cancelled_only_after_saying_so_and_the_tickets_go_back(page, service):
    sale = make_sale(service)
    email, password = service.account()
    sign_in(page, email, password, f"/sales/{sale['id']}")
    page.get_by_test_id("join").click()
    expect(page.get_by_test_id("hold")).to_be_visible(timeout=30_000)
    page.get_by_test_id("zone-BALC").click()
    page.get_by_test_id("quantity").select_option("3")
    page.get_by_test_id("hold").click()
    expect(page.get_by_test_id("held")).to_contain_text("3 × Balcony")

    # "Keep them" keeps the hold.
    page.get_by_test_id("cancel-hold").click()
    page.get_by_test_id("cancel-hold-cancel").click()
    expect(page.get_by_test_id("hold-expires")).to_be_visible()
    expect(page.get_by_test_id("cancel-hold-confirm")).to_be_hidden()

    page.get_by_test_id("cancel-hold").click()
    page.get_by_test_id("cancel-hold-confirm").click()
    # The turn goes on: the zones again, the three tickets back on sale.
    expect(page.get_by_test_id("zone-BALC")).to_contain_text("20 left")
    expect(page.get_by_test_id("hold")).to_be_visible()
    statuses = page.evaluate(
        "fetch('/v1/me/reservations').then(r => r.json()).then(b => b.reservations.map(r => r.status))")
    assert statuses == ["cancelled"]


def test_a_buyer_can_leave_the_line_after_saying_so_twice(page, service):
    sale = make_sale(service, opens_in=600)
    email, password = service.account()
    sign_in(page, email, password, f"/sales/{sale['id']}")
    page.get_by_test_id("join").click()
    expect(page.get_by_test_id("queue-position")).to_have_text("1")

    # Asked first; "Stay" keeps the place.
    page.get_by_test_id("leave").click()
    expect(page.get_by_test_id("leave-confirm")).to_be_visible()
    shot(page, "buyer-leave-phone")
    page.get_by_test_id("leave-cancel").click()
    expect(page.get_by_test_id("leave-confirm")).to_be_hidden()
    assert my_queue(page, sale["id"])["body"]["state"] == "waiting"

    page.get_by_test_id("leave").click()
    page.get_by_test_id("leave-confirm").click()
    expect(page.get_by_test_id("left")).to_have_text("You left the queue.")
    expect(page.get_by_test_id("join")).to_be_visible()
    gone = my_queue(page, sale["id"])
    assert gone["status"] == 404 and gone["body"]["code"] == "not_in_queue"

    # The server agrees after a reload: not in line, free to join again.
    page.reload()
    expect(page.get_by_test_id("join")).to_be_visible()
    expect(page.get_by_test_id("queue-state")).to_have_count(0)


def test_the_page_follows_the_line_on_the_event_stream_and_is_admitted_by_it(page, service):
    token = organizer(service)
    sale = make_sale(service, token=token)
    status, _ = service.call("PATCH", f"/v1/sales/{sale['id']}", {"paused": True}, token=token)
    assert status == 200
    email, password = service.account()
    sign_in(page, email, password, f"/sales/{sale['id']}")
    queue_path = f"/v1/sales/{sale['id']}/queue"
    reads = []
    page.on("request", lambda req: reads.append(req.url.split(service.base, 1)[-1])
            if req.method == "GET" else None)
    with page.expect_request(lambda req: req.url.endswith(f"{queue_path}/events")):
        page.get_by_test_id("join").click()
    expect(page.get_by_test_id("queue-state")).to_have_text("Paused")

    # The organizer resumes: the releaser admits the buyer, and the page
    # hears of it on the stream, without polling.
    status, _ = service.call("PATCH", f"/v1/sales/{sale['id']}", {"paused": False}, token=token)
    assert status == 200
    expect(page.get_by_test_id("zone-FLOOR")).to_be_visible(timeout=15_000)
    # Since joining: the one stream, and not a single poll.
    since = reads[reads.index(f"{queue_path}/events"):]
    assert since.count(f"{queue_path}/events") == 1, since
    assert since.count(queue_path) == 0, f"the page polled: {since}"


def test_a_lost_connection_is_shown_and_the_line_resumes_when_it_returns(page, service):
    token = organizer(service)
    sale = make_sale(service, token=token, opens_in=600)
    email, password = service.account()
    sign_in(page, email, password, f"/sales/{sale['id']}")
    page.get_by_test_id("join").click()
    expect(page.get_by_test_id("queue-state")).to_have_text("In the pre-queue")

    page.context.set_offline(True)
    notice = page.get_by_test_id("connection-lost")
    expect(notice).to_have_text("Connection lost, retrying…", timeout=15_000)
    expect(page.get_by_test_id("queue-position")).to_have_text("1")
    shot(page, "buyer-offline-phone")

    # Meanwhile the organizer pauses the release: the page learns it when
    # it is back, by reading the buyer's standing again.
    status, _ = service.call("PATCH", f"/v1/sales/{sale['id']}", {"paused": True}, token=token)
    assert status == 200
    page.context.set_offline(False)
    expect(notice).to_have_count(0, timeout=30_000)
    expect(page.get_by_test_id("queue-state")).to_have_text("Paused")
    expect(page.get_by_test_id("queue-position")).to_have_text("1")


def test_the_sales_page_lists_open_and_upcoming_sales_with_their_prices(page, service):
    token = organizer(service)
    on_now = make_sale(service, token=token, name=f"On Now {uuid.uuid4().hex[:4]}")
    later = make_sale(service, token=token, opens_in=3600, name=f"Later {uuid.uuid4().hex[:4]}",
                      zones=[{"code": "A", "name": "All", "capacity": 10, "price_cents": 1250}])
    ended = make_sale(service, token=token, name=f"Ended {uuid.uuid4().hex[:4]}")
    status, _ = service.call("PATCH", f"/v1/sales/{ended['id']}", {"state": "closed"}, token=token)
    assert status == 200

    page.goto("/")
    now_card = page.get_by_test_id("open-sales").get_by_test_id(f"sale-{on_now['id']}")
    expect(now_card).to_contain_text("On sale")
    expect(now_card.get_by_test_id("sale-price")).to_have_text("€45.00 – €79.00")
    later_card = page.get_by_test_id("upcoming-sales").get_by_test_id(f"sale-{later['id']}")
    expect(later_card).to_contain_text("Coming up")
    expect(later_card.get_by_test_id("sale-price")).to_have_text("€12.50")
    expect(page.get_by_test_id(f"sale-{ended['id']}")).to_have_count(0)
    shot(page, "buyer-sales-phone")

    later_card.get_by_role("link").click()
    page.wait_for_url(f"**/sales/{later['id']}")
    expect(page.get_by_test_id("countdown")).to_be_visible()


def test_sign_in_and_register_show_the_reason_next_to_the_form(page, service):
    email, password = service.account()

    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("not the password at all")
    page.get_by_test_id("submit").click()
    error = page.get_by_test_id("form-error")
    expect(error).to_have_text("The email or the password is wrong.")
    expect(error).to_have_attribute("aria-live", "assertive")
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    shot(page, "buyer-login-error-phone")

    page.goto("/register")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("another long passphrase")
    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("form-error")).to_have_text("An account with this email already exists.")

    page.get_by_label("Email").fill(f"new-{uuid.uuid4().hex[:8]}@example.com")
    page.get_by_label("Password").fill("short")
    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("form-error")).not_to_be_empty()
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    assert page.url.endswith("/register")


def test_sign_in_goes_back_only_to_a_path_of_this_site(page, service):
    email, password = service.account()
    page.goto("/login?next=//elsewhere.example/steal")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_test_id("submit").click()
    page.wait_for_url(service.base + "/")
    expect(page.get_by_test_id("sign-out")).to_be_visible()
    # The session is a cookie the page's script cannot read, and nothing is
    # kept in storage.
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("localStorage.length") == 0


def test_every_page_fits_a_320_px_screen(new_context, service):
    page = new_context(NARROW)
    sale = make_sale(service, opens_in=600,
                     name="An Evening With The Extraordinarily Long-Named Philharmonic Orchestra")
    for path in ("/", "/login", "/register", f"/sales/{sale['id']}"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        no_sideways_scroll(page)
    expect(page.get_by_test_id("sign-in")).to_be_visible()
    shot(page, "buyer-sale-signed-out-narrow")

    page.goto(f"/sales/{uuid.uuid4()}")
    expect(page.get_by_text("There is no such sale.")).to_be_visible()
    no_sideways_scroll(page)


@pytest.mark.parametrize("device", ["phone", "desktop"])
def test_a_buyer_picks_seats_on_the_seat_map_and_a_taken_seat_is_refused_by_name(
    new_context, service, device
):
    page = new_context(DEVICES[device])
    sale = make_sale(service, zones=[
        {"code": "ST", "name": "Stalls", "price_cents": 6500,
         "seating": {"rows": [{"row": "A", "seats": 6},
                              {"row": "B", "seats": 7, "missing": [4]}]}},
    ])
    here = f"/sales/{sale['id']}"
    email, password = service.account()
    sign_in(page, email, password, here)
    page.get_by_test_id("join").click()
    expect(page.get_by_test_id("hold")).to_be_visible(timeout=30_000)

    # The seat map: every seat free, and picking two names them.
    expect(page.get_by_test_id("seat-A-1")).to_have_attribute("data-status", "free")
    expect(page.get_by_test_id("seat-B-6")).to_be_enabled()
    # Row B's number 4 is no seat (an aisle): no button, a gap in its place.
    expect(page.get_by_test_id("seat-B-4")).to_have_count(0)
    expect(page.locator(".seat-row .seat-gap")).to_have_count(1)
    expect(page.get_by_test_id("seat-B-7")).to_be_enabled()
    page.get_by_test_id("seat-A-3").click()
    page.get_by_test_id("seat-A-4").click()
    expect(page.get_by_test_id("seats-chosen")).to_contain_text("A-3, A-4")
    shot(page, f"buyer-seats-{device}")
    no_sideways_scroll(page)

    # Another buyer takes A-4 meanwhile: the hold is refused naming it, the
    # map shows it held, and the seat still free stays chosen.
    other = service.token(f"other-{uuid.uuid4().hex[:8]}")
    service.call("POST", f"/v1/sales/{sale['id']}/queue", token=other)
    admitted = wait_for("the other buyer's admission", lambda: (
        (s := service.call("GET", f"/v1/sales/{sale['id']}/queue", token=other)[1])
        and s.get("state") == "admitted" and s))
    status, held = service.call("POST", f"/v1/sales/{sale['id']}/reservations",
                                {"zone": "ST", "seats": ["A-4"]}, token=other,
                                headers={"x-queue-pass": admitted["pass"]})
    assert status == 201, held
    page.get_by_test_id("hold").click()
    expect(page.get_by_test_id("hold-error")).to_contain_text("A-4")
    expect(page.get_by_test_id("seat-A-4")).to_have_attribute("data-status", "held")
    expect(page.get_by_test_id("seat-A-4")).to_be_disabled()
    expect(page.get_by_test_id("seats-chosen")).to_contain_text("A-3")

    # Another free seat beside it, and the hold goes through with both.
    page.get_by_test_id("seat-A-2").click()
    page.get_by_test_id("hold").click()
    expect(page.get_by_test_id("held")).to_contain_text("seats A-2, A-3")
    page.get_by_test_id("confirm").click()
    expect(page.get_by_test_id("ticket")).to_contain_text("2 × Stalls · seats A-2, A-3")
    status, seats = service.call("GET", f"/v1/sales/{sale['id']}/zones/ST/seats")
    sold = sorted(s["id"] for s in seats["seats"] if s["status"] == "sold")
    assert sold == ["A-2", "A-3"], seats
