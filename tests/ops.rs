//! Operations endpoints, request ids, metrics, and behaviour with a store down.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::time::Duration;

use common::{assert_problem, fresh_database, lines_until, redis_cli, PrivateRedis, TestApp};
use fred::interfaces::KeysInterface;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn health_and_ready_answer_when_both_stores_are_up() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/health", None).await.status(), StatusCode::OK);
    let res = app.get("/ready", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "ready", "redis": "ok", "postgres": "ok"})
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id_echoing_the_clients() {
    let app = TestApp::spawn().await;
    let res = app.get("/health", None).await;
    let made = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 36, "a uuid");
    let res = app
        .http
        .get(app.url("/v1/sales/nope"))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-me-123");
    assert_problem(res, StatusCode::NOT_FOUND, "sale_not_found").await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = TestApp::spawn().await;
    assert_problem(
        app.get("/v1/nothing-here", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let res = app.http.delete(app.url("/v1/sales")).send().await.unwrap();
    assert_problem(res, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_and_inventory_events() {
    let app = TestApp::spawn().await;
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 2}]}))
        .await;
    // Both admitted while there is stock; then alice takes it all.
    app.pass_for(sale, "m-alice").await;
    app.pass_for(sale, "m-bob").await;
    let r: Value = app
        .hold(sale, "m-alice", "A", 2, None)
        .await
        .json()
        .await
        .unwrap();
    app.hold(sale, "m-bob", "A", 1, None).await; // sold out
    app.confirm(r["id"].as_str().unwrap(), "m-alice").await;
    let text = app.get("/metrics", None).await.text().await.unwrap();
    for needle in [
        "flashsale_http_requests_total{route=\"/v1/sales/{sale_id}/reservations\",method=\"POST\",status=\"201\"}",
        "flashsale_http_requests_total{route=\"/v1/sales/{sale_id}/reservations\",method=\"POST\",status=\"409\"}",
        "flashsale_http_request_duration_seconds_bucket{route=\"/v1/sales/{sale_id}/reservations\"",
        "flashsale_holds_total",
        "flashsale_confirms_total",
        "flashsale_sold_out_refusals_total",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}");
    }
}

#[tokio::test]
async fn an_invented_method_is_a_405_counted_as_other_so_labels_stay_bounded() {
    let app = TestApp::spawn().await;
    let method = reqwest::Method::from_bytes(b"BREW").unwrap();
    let r = reqwest::Client::new()
        .request(method, app.url("/v1/sales"))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    let text = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        text.contains(
            "flashsale_http_requests_total{route=\"/v1/sales\",method=\"OTHER\",status=\"405\"}"
        ),
        "an invented method is labelled OTHER"
    );
    assert!(
        !text.contains("BREW"),
        "the invented method never becomes a label"
    );
}

#[tokio::test]
async fn a_panicking_handler_answers_an_opaque_500_problem_and_the_server_keeps_serving() {
    async fn panics() -> &'static str {
        panic!("secret detail of a bug")
    }
    let panics = axum::Router::new().route("/test/panic", axum::routing::get(panics));
    let app = TestApp::spawn_with_routes(panics).await;
    for _ in 0..2 {
        let res = app
            .http
            .get(app.url("/test/panic"))
            .header("x-request-id", "panic-1")
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()["x-request-id"], "panic-1");
        let body = assert_problem(res, StatusCode::INTERNAL_SERVER_ERROR, "internal").await;
        assert_eq!(body["detail"], "internal error");
        assert!(!body.to_string().contains("secret"), "opaque: {body}");
    }
    assert_eq!(app.get("/health", None).await.status(), StatusCode::OK);
    // Counted as 500s; under no route, as the template travels on the
    // response the handler never made.
    let text = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        text.contains(
            "flashsale_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"500\"}"
        ),
        "the panics are counted as 500s"
    );
}

#[tokio::test]
async fn with_redis_down_the_api_answers_503_with_retry_after_and_ready_names_redis() {
    // Nothing listens on this port.
    let app = TestApp::spawn_with_redis("redis://127.0.0.1:1").await;
    let res = app.get("/ready", None).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["redis"], "down");
    assert_eq!(body["postgres"], "ok");
    assert!(body["detail"].as_str().unwrap().contains("redis"));

    let res = app.join(flashsale::ids::SaleId::new(), "alice").await;
    assert!(res.headers().get("retry-after").is_some());
    assert_problem(res, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    let res = app
        .get(
            &format!("/v1/sales/{}", flashsale::ids::SaleId::new()),
            None,
        )
        .await;
    assert_problem(res, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
}

/// Redis at `maxmemory` with `noeviction` refuses writes (`-OOM`): buyers
/// are told to retry, as while Redis is down, not that the service broke;
/// reads still work.
#[tokio::test]
async fn redis_out_of_memory_is_503_unavailable_with_retry_after() {
    // 2 MB: an empty redis-server takes 0.9 MB and the service's scripts
    // and connections another 0.1 to 0.2, so at 1 MB not even a sale fits.
    let private =
        PrivateRedis::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let (_, db_url) = fresh_database().await;
    let app = TestApp::serve(&private.url(), &db_url).await;
    let sale = app.sale_id(json!({})).await;
    // Fill Redis until it refuses a write (bounded: 8 MB in 4 KB values).
    let filler = "x".repeat(4096);
    let mut filled = 0;
    for i in 0..2_000 {
        let set: Result<(), _> = app
            .redis
            .set(format!("filler:{i}"), filler.as_str(), None, None, false)
            .await;
        match set {
            Ok(()) => filled = i + 1,
            Err(err) => {
                assert!(err.details().contains("OOM"), "{err:?}");
                break;
            }
        }
    }
    assert!(filled < 2_000, "redis never refused a write");
    // Full, Redis sits at the limit, and connection buffers that come and
    // go could let a write through: a limit well under what it holds keeps
    // it refusing for the rest of the test.
    assert_eq!(
        redis_cli(private.port, &["CONFIG", "SET", "maxmemory", "1mb"]).trim(),
        "OK"
    );

    let res = app.join(sale, "buyer").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    let problem = assert_problem(res, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(problem["detail"].as_str().unwrap().contains("unavailable"));
    let res = app
        .post(
            "/v1/sales",
            Some(&app.organizer("org-1")),
            json!({"name": "x", "zones": [{"code": "A", "capacity": 1}]}),
        )
        .await;
    assert_problem(res, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    // Reads go on.
    let read = app.get(&format!("/v1/sales/{sale}"), None).await;
    assert_eq!(read.status(), StatusCode::OK);

    // Room again: writes go through, with no restart.
    assert_eq!(
        redis_cli(private.port, &["CONFIG", "SET", "maxmemory", "2mb"]).trim(),
        "OK"
    );
    let _: i64 = app
        .redis
        .del(
            (0..filled)
                .map(|i| format!("filler:{i}"))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let mut joined = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        joined = app.join(sale, "buyer").await.status();
        if joined == StatusCode::ACCEPTED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(joined, StatusCode::ACCEPTED);
}

/// `flashsale serve` says at start when Redis may evict keys (a sale's
/// stock, holds or queue), and says nothing when it may not.
#[tokio::test]
async fn serve_warns_at_start_unless_redis_refuses_to_evict() {
    let (_, db_url) = fresh_database().await;
    for (policy, warns) in [("allkeys-lru", true), ("noeviction", false)] {
        let redis = PrivateRedis::start_with(&["--maxmemory-policy", policy]);
        let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .arg("serve")
            .env("REDIS_URL", redis.url())
            .env("DATABASE_URL", &db_url)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("JWT_SECRET", common::JWT_SECRET)
            .env("FLASHSALE_ENV", "development")
            .env("RUST_LOG", "warn,flashsale=info")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_until(
            &mut serve,
            "flashsale API listening",
            Duration::from_secs(20),
        );
        let _ = serve.kill();
        let _ = serve.wait();
        let warned = lines
            .iter()
            .any(|l| l.contains("maxmemory-policy is not noeviction"));
        assert_eq!(warned, warns, "{policy}: {lines:#?}");
    }
}

/// `flashsale <args>` with only `vars` of the service's settings set (none
/// inherited from the test's environment), stdout piped.
fn flashsale_with(args: &[&str], vars: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"));
    cmd.args(args)
        .env_remove("JWT_SECRET")
        .env_remove("PASS_SIGNING_KEY")
        .env_remove("FLASHSALE_ENV")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn,flashsale=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `cmd`, which must exit of itself (a refusal needs no store), and
/// returns its exit status and standard error.
fn refused(mut cmd: std::process::Command) -> (std::process::ExitStatus, String) {
    let mut child = cmd.spawn().unwrap();
    for _ in 0..400 {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status, err);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the command started instead of refusing");
}

/// A queue-pass signing key as PASS_SIGNING_KEY takes it.
fn pass_key() -> String {
    let seed: [u8; 32] = rand::random();
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, seed)
}

const REAL_SECRET: &str = "a-secret-of-this-deployment-only-7f3a9c2e5b8d1f4a";

#[tokio::test]
async fn in_production_serve_refuses_missing_short_and_published_secrets_naming_the_variable() {
    let key = pass_key();
    // What is wrong, the variables set, the variable the refusal names.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "JWT_SECRET unset",
            vec![("PASS_SIGNING_KEY", &key)],
            "JWT_SECRET",
        ),
        (
            "JWT_SECRET short",
            vec![("JWT_SECRET", "too-short"), ("PASS_SIGNING_KEY", &key)],
            "JWT_SECRET",
        ),
        (
            "the built-in development secret",
            vec![
                ("JWT_SECRET", flashsale::config::DEV_JWT_SECRET),
                ("PASS_SIGNING_KEY", &key),
            ],
            "JWT_SECRET",
        ),
        (
            "the k8s example Secret's placeholder",
            vec![
                ("JWT_SECRET", "<openssl rand -base64 48>"),
                ("PASS_SIGNING_KEY", &key),
            ],
            "JWT_SECRET",
        ),
        (
            "a long template placeholder",
            vec![
                (
                    "JWT_SECRET",
                    "<a secret of at least thirty-two bytes, from a vault>",
                ),
                ("PASS_SIGNING_KEY", &key),
            ],
            "JWT_SECRET",
        ),
        (
            "the tests' secret",
            vec![
                ("JWT_SECRET", common::JWT_SECRET),
                ("PASS_SIGNING_KEY", &key),
            ],
            "JWT_SECRET",
        ),
        (
            "the load scripts' secret",
            vec![
                ("JWT_SECRET", "load-test-secret-load-test-secret-0123456789"),
                ("PASS_SIGNING_KEY", &key),
            ],
            "JWT_SECRET",
        ),
        (
            "PASS_SIGNING_KEY unset",
            vec![("JWT_SECRET", REAL_SECRET)],
            "PASS_SIGNING_KEY",
        ),
        (
            "the k8s example Secret's key placeholder",
            vec![
                ("JWT_SECRET", REAL_SECRET),
                ("PASS_SIGNING_KEY", "<openssl genpkey -algorithm ed25519>"),
            ],
            "PASS_SIGNING_KEY",
        ),
        (
            "an unknown environment",
            vec![
                ("FLASHSALE_ENV", "staging"),
                ("JWT_SECRET", REAL_SECRET),
                ("PASS_SIGNING_KEY", &key),
            ],
            "FLASHSALE_ENV",
        ),
        (
            "production said outright",
            vec![("FLASHSALE_ENV", "production"), ("PASS_SIGNING_KEY", &key)],
            "JWT_SECRET",
        ),
    ];
    for (what, vars, variable) in cases {
        let (status, err) = refused(flashsale_with(&["serve"], &vars));
        assert!(!status.success(), "{what}: {err}");
        assert!(err.contains(variable), "{what}: names {variable}: {err}");
        assert!(
            !err.contains("flashsale API listening"),
            "{what}: refused before listening: {err}"
        );
    }
    // The commands that sign for real refuse as serve does; those that
    // only sign access tokens need JWT_SECRET alone.
    let (status, err) = refused(flashsale_with(&["token", "--sub", "someone"], &[]));
    assert!(!status.success() && err.contains("JWT_SECRET"), "{err}");
    let (status, err) = refused(flashsale_with(
        &[
            "prepare-buyers",
            "--sale",
            "x",
            "--count",
            "1",
            "--out",
            "/dev/null",
        ],
        &[("JWT_SECRET", REAL_SECRET)],
    ));
    assert!(
        !status.success() && err.contains("PASS_SIGNING_KEY"),
        "{err}"
    );
    let out = flashsale_with(
        &["token", "--sub", "someone"],
        &[("JWT_SECRET", REAL_SECRET)],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn serve_starts_with_real_secrets_in_production_and_without_any_in_development() {
    let (_, db_url) = fresh_database().await;
    let key = pass_key();
    let stores = [
        ("REDIS_URL", common::redis_url()),
        ("DATABASE_URL", db_url.clone()),
    ];
    let runs: [Vec<(&str, &str)>; 2] = [
        vec![("JWT_SECRET", REAL_SECRET), ("PASS_SIGNING_KEY", &key)],
        vec![("FLASHSALE_ENV", "development")],
    ];
    for vars in runs {
        let mut cmd = flashsale_with(&["serve"], &vars);
        for (k, v) in &stores {
            cmd.env(k, v);
        }
        let mut serve = cmd.spawn().unwrap();
        let lines = lines_until(
            &mut serve,
            "flashsale API listening",
            Duration::from_secs(20),
        );
        let _ = serve.kill();
        let _ = serve.wait();
        assert!(!lines.is_empty(), "{vars:?}");
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint_and_the_docs_page_renders_it_alone() {
    let app = TestApp::spawn().await;
    let res = app.get("/openapi.json", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let expected = [
        ("post", "/v1/auth/register"),
        ("post", "/v1/auth/login"),
        ("post", "/v1/auth/session"),
        ("delete", "/v1/auth/session"),
        ("get", "/v1/me"),
        ("post", "/v1/sales"),
        ("get", "/v1/sales/{sale_id}"),
        ("patch", "/v1/sales/{sale_id}"),
        ("get", "/v1/sales/{sale_id}/stats"),
        ("get", "/v1/sales/{sale_id}/prequeue"),
        ("post", "/v1/sales/{sale_id}/queue"),
        ("get", "/v1/sales/{sale_id}/queue"),
        ("delete", "/v1/sales/{sale_id}/queue"),
        ("post", "/v1/sales/{sale_id}/reservations"),
        ("get", "/v1/reservations/{id}"),
        ("post", "/v1/reservations/{id}/confirm"),
        ("post", "/v1/reservations/{id}/cancel"),
        ("get", "/v1/me/reservations"),
        ("get", "/.well-known/jwks.json"),
        ("get", "/health"),
        ("get", "/ready"),
        ("get", "/metrics"),
    ];
    for (method, path) in expected {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    let hold = &doc["paths"]["/v1/sales/{sale_id}/reservations"]["post"]["responses"];
    for code in ["201", "403", "404", "409", "422", "429", "503"] {
        assert!(hold[code].is_object(), "hold documents {code}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["session"]["in"],
        "cookie"
    );
    assert_eq!(
        doc["paths"]["/v1/sales/{sale_id}/queue"]["post"]["security"],
        json!([{"bearer": []}, {"session": []}])
    );
    let res = app.get("/docs", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    let csp = header("content-security-policy");
    assert!(csp.starts_with("default-src 'self';"), "{csp}");
    assert!(csp.contains("script-src 'none'"), "{csp}");
    let page = res.text().await.unwrap();
    assert!(page.len() < 200 * 1024, "{} bytes", page.len());
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            let heading = format!(
                "<span class=\"m {method}\">{}</span><code>{path}</code></h3>",
                method.to_uppercase()
            );
            assert!(page.contains(&heading), "{method} {path} on /docs");
        }
    }
    for schema in doc["components"]["schemas"].as_object().unwrap().keys() {
        assert!(page.contains(&format!(">{schema}</h3>")), "schema {schema}");
    }
    assert!(
        page.contains("<code>sold_out</code>"),
        "response descriptions"
    );
    // Nothing on the page comes from, or links to, another host.
    for attribute in ["src=", "href=", "action="] {
        for value in page.split(attribute).skip(1) {
            let value = value.trim_start_matches(['"', '\'']).to_ascii_lowercase();
            assert!(
                value.starts_with('#') || value.starts_with("/openapi.json"),
                "{attribute}{}",
                &value[..value.len().min(60)]
            );
        }
    }
}

const FRONT_END: &str = "https://tickets.example.com";

#[tokio::test]
async fn cross_origin_calls_are_allowed_for_the_listed_origins_only() {
    let app = TestApp::spawn_with(|c| {
        c.cors_allowed_origins = vec![FRONT_END.into(), "http://localhost:3000".into()]
    })
    .await;
    let sale = app.sale_id(json!({})).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(
                reqwest::Method::OPTIONS,
                app.url(&format!("/v1/sales/{sale}/reservations")),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key,x-queue-pass",
            )
            .send()
    };
    let res = preflight(FRONT_END).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let header = |res: &reqwest::Response, name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
    };
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(FRONT_END)
    );
    let methods = header(&res, "access-control-allow-methods").unwrap();
    for method in ["get", "post", "patch", "delete"] {
        assert!(methods.contains(method), "{methods}");
    }
    assert!(!methods.contains("put"), "{methods}");
    let allowed = header(&res, "access-control-allow-headers").unwrap();
    for name in [
        "authorization",
        "content-type",
        "idempotency-key",
        "x-queue-pass",
        "x-request-id",
        "x-flashsale-csrf",
    ] {
        assert!(allowed.contains(name), "{name} in {allowed}");
    }
    assert_eq!(header(&res, "access-control-allow-credentials"), None);

    for unlisted in ["https://evil.example.com", "http://tickets.example.com"] {
        let res = preflight(unlisted).await.unwrap();
        assert_eq!(
            header(&res, "access-control-allow-origin"),
            None,
            "{unlisted}"
        );
    }

    let read = |origin: &'static str| {
        app.http
            .get(app.url(&format!("/v1/sales/{sale}")))
            .header("origin", origin)
            .send()
    };
    let res = read(FRONT_END).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(FRONT_END)
    );
    let exposed = header(&res, "access-control-expose-headers").unwrap();
    for name in ["x-request-id", "retry-after", "idempotent-replayed"] {
        assert!(exposed.contains(name), "{name} in {exposed}");
    }
    let res = read("https://evil.example.com").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn without_allowed_origins_no_cross_origin_use_is_allowed() {
    let app = TestApp::spawn().await;
    let res = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/v1/sales"))
        .header("origin", FRONT_END)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    let res = app
        .http
        .get(app.url("/v1/sales"))
        .header("origin", FRONT_END)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("access-control-allow-origin").is_none());
}
