//! Accounts through HTTP: register, log in, use the token; browser sessions
//! (the cookie and its CSRF header); organizers created from the command
//! line, and the demo's accounts.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use common::{assert_problem, TestApp};
use flashsale::tokens::Role;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

fn email() -> String {
    format!("fan-{}@example.com", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn a_buyer_registers_logs_in_and_the_token_works() {
    let app = TestApp::spawn().await;
    let email = email();
    let res = app
        .post(
            "/v1/auth/register",
            None,
            json!({"email": email, "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user_id = res.json::<Value>().await.unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Any case of the email logs in.
    let res = app
        .post(
            "/v1/auth/login",
            None,
            json!({"email": email.to_uppercase(), "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let login: Value = res.json().await.unwrap();
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["expires_in"], 3600);
    let token = login["access_token"].as_str().unwrap();
    let me = app.tokens.verify(token).unwrap();
    assert_eq!(me.user_id, user_id);
    assert_eq!(me.role, flashsale::tokens::Role::Buyer);

    let sale = app.sale_id(json!({})).await;
    let res = app
        .post(&format!("/v1/sales/{sale}/queue"), Some(token), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    // A buyer's token cannot create sales.
    let res = app
        .post(
            "/v1/sales",
            Some(token),
            json!({"name": "x", "zones": [{"code": "A", "capacity": 1}]}),
        )
        .await;
    assert_problem(res, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn login_answers_are_never_stored_and_401s_name_the_bearer_scheme() {
    let app = TestApp::spawn().await;
    let email = email();
    let password = "correct horse battery";
    let credentials = json!({"email": email, "password": password});
    app.post("/v1/auth/register", None, credentials.clone())
        .await;
    let res = app.post("/v1/auth/login", None, credentials.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let res = session_login(&app, &email, password, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let refusals = [
        app.post(
            "/v1/auth/login",
            None,
            json!({"email": email, "password": "wrong horse battery"}),
        )
        .await,
        app.get("/v1/me", None).await,
        app.get("/v1/me", Some("not-a-token")).await,
    ];
    for res in refusals {
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
    }
}

#[tokio::test]
async fn with_an_issuer_and_audience_configured_tokens_lacking_either_are_refused() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let app = TestApp::spawn_with(|c| {
        c.jwt.issuer = Some("flashsale".into());
        c.jwt.audience = Some("flashsale-api".into());
    })
    .await;
    let exp = flashsale::tokens::unix_now() + 600;
    let sign = |claims: Value| {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(common::JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    let me = |token: String| {
        let app = &app;
        async move { app.get("/v1/me", Some(&token)).await }
    };
    let both = sign(
        json!({"sub": "u", "role": "buyer", "exp": exp, "iss": "flashsale", "aud": "flashsale-api"}),
    );
    assert_eq!(me(both).await.status(), StatusCode::OK);
    assert_eq!(
        me(app.buyer("u")).await.status(),
        StatusCode::OK,
        "the service's own tokens carry both"
    );
    for (what, claims) in [
        (
            "no iss",
            json!({"sub": "u", "role": "buyer", "exp": exp, "aud": "flashsale-api"}),
        ),
        (
            "no aud",
            json!({"sub": "u", "role": "buyer", "exp": exp, "iss": "flashsale"}),
        ),
        ("neither", json!({"sub": "u", "role": "buyer", "exp": exp})),
        (
            "another iss",
            json!({"sub": "u", "role": "buyer", "exp": exp, "iss": "elsewhere", "aud": "flashsale-api"}),
        ),
        (
            "another aud",
            json!({"sub": "u", "role": "buyer", "exp": exp, "iss": "flashsale", "aud": "elsewhere"}),
        ),
    ] {
        let res = me(sign(claims)).await;
        assert_problem(res, StatusCode::UNAUTHORIZED, "unauthenticated")
            .await
            .get("detail")
            .unwrap_or_else(|| panic!("{what}"));
    }
}

#[tokio::test]
async fn wrong_passwords_and_unknown_emails_get_the_same_answer() {
    let app = TestApp::spawn().await;
    let email = email();
    app.post(
        "/v1/auth/register",
        None,
        json!({"email": email, "password": "correct horse battery"}),
    )
    .await;
    for (e, p) in [
        (email.as_str(), "wrong horse battery"),
        ("nobody@example.com", "correct horse battery"),
    ] {
        let res = app
            .post("/v1/auth/login", None, json!({"email": e, "password": p}))
            .await;
        let body = assert_problem(res, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
        assert_eq!(body["detail"], "the email or the password is wrong");
    }
}

#[tokio::test]
async fn registration_refuses_bad_emails_weak_passwords_and_taken_emails() {
    let app = TestApp::spawn().await;
    let res = app
        .post(
            "/v1/auth/register",
            None,
            json!({"email": "not-an-email", "password": "correct horse battery"}),
        )
        .await;
    assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_email").await;
    for weak in ["short", "aaaaaaaaaaaaaaaa", "Password123"] {
        let res = app
            .post(
                "/v1/auth/register",
                None,
                json!({"email": email(), "password": weak}),
            )
            .await;
        assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "weak_password").await;
    }
    let res = app
        .post(
            "/v1/auth/register",
            None,
            json!({"email": 5, "password": []}),
        )
        .await;
    assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;

    // The same email in another case, many times at once: exactly one wins.
    let email = email();
    let attempts = (0..8).map(|i| {
        let e = if i % 2 == 0 {
            email.clone()
        } else {
            email.to_uppercase()
        };
        app.post(
            "/v1/auth/register",
            None,
            json!({"email": e, "password": "correct horse battery"}),
        )
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status())
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        7,
        "{statuses:?}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(
        hash.starts_with("$argon2id$"),
        "stored as argon2id, never in clear"
    );
}

#[tokio::test]
async fn organizers_are_created_from_the_command_line_and_can_create_sales() {
    let app = TestApp::spawn().await;
    let email = email();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["add-user", "--email", &email, "--role", "organizer"])
        .env("DATABASE_URL", &app.db_url)
        .env("FLASHSALE_PASSWORD", "organizer password 1")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let res = app
        .post(
            "/v1/auth/login",
            None,
            json!({"email": email, "password": "organizer password 1"}),
        )
        .await;
    let token = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .post(
            "/v1/sales",
            Some(&token),
            json!({"name": "By CLI organizer", "zones": [{"code": "A", "capacity": 5}]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
}

/// A buyer account made directly in the database, and its password.
async fn account(app: &TestApp, role: Role) -> (String, String, String) {
    let email = email();
    let password = "correct horse battery".to_owned();
    let id = flashsale::accounts::register(
        &app.db,
        &flashsale::accounts::Email::parse(&email).unwrap(),
        flashsale::accounts::Password::parse(&password).unwrap(),
        role,
    )
    .await
    .unwrap();
    (id.to_string(), email, password)
}

/// `POST /v1/auth/session` as a page sends it, to `host` when given.
async fn session_login(app: &TestApp, email: &str, password: &str, host: Option<&str>) -> Response {
    let mut req = app
        .http
        .post(app.url("/v1/auth/session"))
        .header("x-flashsale-csrf", "1")
        .json(&json!({"email": email, "password": password}));
    if let Some(host) = host {
        req = req.header("host", host);
    }
    req.send().await.unwrap()
}

fn set_cookie(res: &Response) -> String {
    let all: Vec<&str> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(all.len(), 1, "one Set-Cookie: {all:?}");
    all[0].to_owned()
}

/// Signs in with a session and returns the `Cookie` header value to send.
async fn cookie_for(app: &TestApp, email: &str, password: &str) -> String {
    let res = session_login(app, email, password, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let set = set_cookie(&res);
    set.split(';').next().unwrap().to_owned()
}

/// A request from a page: the cookie, and the CSRF header when `csrf`.
fn from_page(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    csrf: bool,
) -> reqwest::RequestBuilder {
    let req = app
        .http
        .request(method, app.url(path))
        .header("cookie", cookie);
    if csrf {
        req.header("x-flashsale-csrf", "1")
    } else {
        req
    }
}

#[tokio::test]
async fn a_session_login_sets_an_http_only_strict_cookie_secure_unless_on_loopback() {
    let app = TestApp::spawn().await;
    let (id, email, password) = account(&app, Role::Buyer).await;

    let res = session_login(&app, &email, &password, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = set_cookie(&res);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({"user_id": id, "role": "buyer", "expires_in": 3600})
    );
    let (pair, attributes) = cookie.split_once(';').unwrap();
    let token = pair.strip_prefix("flashsale_session=").unwrap();
    assert_eq!(app.tokens.verify(token).unwrap().user_id, id);
    let attributes: Vec<&str> = attributes.split(';').map(str::trim).collect();
    assert_eq!(
        attributes,
        ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=3600"],
        "no Secure on 127.0.0.1: {cookie}"
    );

    for host in [
        "tickets.example.com",
        "tickets.example.com:443",
        "10.1.2.3:8080",
    ] {
        let res = session_login(&app, &email, &password, Some(host)).await;
        assert_eq!(res.status(), StatusCode::OK);
        let cookie = set_cookie(&res);
        assert!(cookie.ends_with("; Secure"), "{host}: {cookie}");
        assert!(
            cookie.contains("; HttpOnly; SameSite=Strict; Path=/;"),
            "{cookie}"
        );
    }
    let res = session_login(&app, &email, &password, Some("localhost:8080")).await;
    assert!(!set_cookie(&res).contains("Secure"));

    // A page of another site cannot send the header: no session for it.
    let res = app
        .post(
            "/v1/auth/session",
            None,
            json!({"email": email, "password": password}),
        )
        .await;
    assert!(res.headers().get("set-cookie").is_none());
    assert_problem(res, StatusCode::FORBIDDEN, "csrf_required").await;
}

#[tokio::test]
async fn a_session_login_with_a_wrong_password_is_refused_without_a_cookie() {
    let app = TestApp::spawn().await;
    let (_, email, _) = account(&app, Role::Buyer).await;
    for (e, p) in [
        (email.as_str(), "wrong horse battery"),
        ("nobody@example.com", "correct horse battery"),
    ] {
        let res = session_login(&app, e, p, None).await;
        assert!(res.headers().get("set-cookie").is_none());
        assert_problem(res, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
}

#[tokio::test]
async fn the_session_cookie_reads_freely_and_changes_only_with_the_csrf_header() {
    let app = TestApp::spawn().await;
    let (id, email, password) = account(&app, Role::Buyer).await;
    let cookie = cookie_for(&app, &email, &password).await;
    use reqwest::Method;

    let res = from_page(&app, Method::GET, "/v1/me", &cookie, false)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"user_id": id, "role": "buyer"})
    );

    // Joining without the header is refused, and the buyer is not in line.
    let sale = app.sale_id(json!({})).await;
    let queue = format!("/v1/sales/{sale}/queue");
    let res = from_page(&app, Method::POST, &queue, &cookie, false)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(res, StatusCode::FORBIDDEN, "csrf_required").await;
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("x-flashsale-csrf: 1"));
    let res = from_page(&app, Method::GET, &queue, &cookie, false)
        .send()
        .await
        .unwrap();
    assert_problem(res, StatusCode::NOT_FOUND, "not_in_queue").await;
    let waiting = app.get(&format!("/v1/sales/{sale}"), None).await;
    assert_eq!(waiting.json::<Value>().await.unwrap()["waiting"], 0);

    // With it, the join counts; leaving without it is refused too.
    let res = from_page(&app, Method::POST, &queue, &cookie, true)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let res = from_page(&app, Method::DELETE, &queue, &cookie, false)
        .send()
        .await
        .unwrap();
    assert_problem(res, StatusCode::FORBIDDEN, "csrf_required").await;

    // Admitted, the page holds with its cookie and the queue pass.
    app.tick(sale, 300_000).await;
    let status: Value = from_page(&app, Method::GET, &queue, &cookie, false)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "admitted", "{status}");
    let pass = status["pass"].as_str().unwrap();
    let hold = format!("/v1/sales/{sale}/reservations");
    let body = json!({"zone": "A", "quantity": 2});
    let res = from_page(&app, Method::POST, &hold, &cookie, false)
        .header("x-queue-pass", pass)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(res, StatusCode::FORBIDDEN, "csrf_required").await;
    assert_eq!(app.stock(sale, "A").await.1, 0, "nothing held");
    let res = from_page(&app, Method::POST, &hold, &cookie, true)
        .header("x-queue-pass", pass)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(app.stock(sale, "A").await.1, 2);

    // Bearer clients need no header, and a Bearer token wins over a cookie.
    let other = app.sale_id(json!({})).await;
    let token = app.buyer("someone-else");
    let res = app
        .http
        .post(app.url(&format!("/v1/sales/{other}/queue")))
        .bearer_auth(&token)
        .header("cookie", &cookie)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let res = app.poll(other, "someone-else").await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = from_page(
        &app,
        Method::GET,
        &format!("/v1/sales/{other}/queue"),
        &cookie,
        false,
    )
    .send()
    .await
    .unwrap();
    assert_problem(res, StatusCode::NOT_FOUND, "not_in_queue").await;

    // A cookie that is not a valid token signs nobody in.
    for bad in ["flashsale_session=forged", "flashsale_session="] {
        let res = from_page(&app, Method::GET, "/v1/me", bad, true)
            .send()
            .await
            .unwrap();
        assert_problem(res, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    }
    let res = app.get("/v1/me", None).await;
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthenticated").await;
}

#[tokio::test]
async fn logging_out_expires_the_cookie_with_or_without_a_session() {
    let app = TestApp::spawn().await;
    let (_, email, password) = account(&app, Role::Buyer).await;
    let cookie = cookie_for(&app, &email, &password).await;
    for with_cookie in [true, false] {
        let mut req = app.http.delete(app.url("/v1/auth/session"));
        if with_cookie {
            req = req.header("cookie", &cookie);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            set_cookie(&res),
            "flashsale_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        );
    }
}

#[tokio::test]
async fn an_organizers_cookie_steers_their_sale_with_the_csrf_header() {
    let app = TestApp::spawn().await;
    let (id, email, password) = account(&app, Role::Organizer).await;
    let cookie = cookie_for(&app, &email, &password).await;
    use reqwest::Method;
    let res = from_page(&app, Method::POST, "/v1/sales", &cookie, true)
        .json(&json!({"name": "From the console", "release_rate": 10,
                      "zones": [{"code": "A", "capacity": 5}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let sale = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let owner: String = sqlx::query_scalar("SELECT organizer_id FROM sales WHERE id = $1::uuid")
        .bind(&sale)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(owner, id);

    let path = format!("/v1/sales/{sale}");
    let res = from_page(&app, Method::PATCH, &path, &cookie, false)
        .json(&json!({"release_rate": 50}))
        .send()
        .await
        .unwrap();
    assert_problem(res, StatusCode::FORBIDDEN, "csrf_required").await;
    let read: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(read["release_rate"], 10, "unchanged");

    let res = from_page(&app, Method::PATCH, &path, &cookie, true)
        .json(&json!({"release_rate": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let read: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(read["release_rate"], 50);
    let res = from_page(&app, Method::GET, &format!("{path}/stats"), &cookie, false)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// What `flashsale demo` printed after `label`, up to the end of its word.
fn printed_after<'a>(out: &'a str, label: &str) -> &'a str {
    let at = out
        .find(label)
        .unwrap_or_else(|| panic!("`{label}` in {out}"))
        + label.len();
    out[at..].split_whitespace().next().unwrap()
}

#[tokio::test]
async fn the_demo_creates_its_accounts_once_and_gives_its_sale_to_the_demo_organizer() {
    let app = TestApp::spawn().await;
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["demo", "--base-url", "http://127.0.0.1:8080"])
            .env("DATABASE_URL", &app.db_url)
            .env("REDIS_URL", flashsale_testkit::redis_url())
            .env("JWT_SECRET", "another-secret-that-is-long-enough-for-hs256")
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    let second = run();
    let organizer_password = printed_after(&first, "organizer@demo.flashsale  password ");
    let buyer_password = printed_after(&first, "buyer@demo.flashsale  password ");
    assert_eq!(
        organizer_password,
        printed_after(&second, "organizer@demo.flashsale  password ")
    );
    let sales = [
        printed_after(&first, "Demo sale created: "),
        printed_after(&second, "Demo sale created: "),
    ];
    for page in [
        "http://127.0.0.1:8080/ ".to_owned(),
        format!("http://127.0.0.1:8080/sales/{}", sales[0]),
        "http://127.0.0.1:8080/console".to_owned(),
        "http://127.0.0.1:8080/docs".to_owned(),
    ] {
        assert!(first.contains(&page), "{page} in {first}");
    }
    assert!(first.contains("curl -s http://127.0.0.1:8080/v1/sales/$SALE"));

    let accounts: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE email LIKE '%@demo.flashsale'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(accounts, 2);

    let cookie = cookie_for(&app, "organizer@demo.flashsale", organizer_password).await;
    let mine: Value = app
        .http
        .get(app.url("/v1/organizer/sales"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<&str> = mine["sales"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected = sales.to_vec();
    expected.sort_unstable();
    assert_eq!(ids, expected, "{mine}");

    let res = session_login(&app, "buyer@demo.flashsale", buyer_password, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["role"], "buyer");
}
