//! Helpers for the workers' tests: stores, a private redis-server for tests
//! that run the real workers process or kill Redis, and sales with buyers
//! who went through the queue.

#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use chrono::Utc;
use flashsale::{
    ids::{ReservationId, SaleId},
    inventory::{self, HoldRequest},
    queue,
    sales::{self, NewSale},
    scripts::Scripts,
};
use fred::clients::Pool;
use sqlx::PgPool;

pub fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A fresh, migrated database; returns the pool and its URL.
pub async fn fresh_database() -> (PgPool, String) {
    let base = env(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/flashsale",
    );
    let admin = PgPool::connect(&base).await.unwrap();
    let name = format!("fs_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
    let db = PgPool::connect(&url).await.unwrap();
    flashsale::db::migrate(&db).await.unwrap();
    (db, url)
}

pub async fn redis(url: &str) -> Pool {
    flashsale::redis::connect(url, 2, Duration::from_secs(2))
        .await
        .unwrap()
}

/// The machine's Redis, shared by tests that touch only their own sales.
pub fn shared_redis_url() -> String {
    env("REDIS_URL", "redis://127.0.0.1:6379")
}

/// A redis-server of the test's own on a free loopback port, with AOF on and
/// `appendfsync everysec`, as production runs it; killed when dropped.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("fs-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Self {
            port,
            dir,
            child: None,
        };
        r.launch();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts) the server on the same port and data folder.
    pub fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("private redis-server did not start");
    }

    /// kill -9: no shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The real `flashsale-workers` binary against the given stores, killed
/// when dropped.
pub struct Workers {
    pub child: Child,
}

impl Workers {
    pub fn start(redis_url: &str, database_url: &str, extra: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashsale-workers"));
        cmd.env("REDIS_URL", redis_url)
            .env("DATABASE_URL", database_url)
            .env("WORKERS_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("start flashsale-workers"),
        }
    }

    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("workers did not exit within ten seconds of SIGTERM");
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sale opening now with zones A and B of `capacity` each, that admits
/// up to 10,000 buyers a tick.
pub async fn sale(
    db: &PgPool,
    redis: &Pool,
    scripts: &Scripts,
    capacity: u32,
    hold_ttl: u32,
) -> SaleId {
    create_sale(
        db,
        redis,
        scripts,
        serde_json::json!({
            "name": "workers test",
            "zones": [{"code": "A", "capacity": capacity}, {"code": "B", "capacity": capacity}],
            "hold_ttl_seconds": hold_ttl,
            "per_user_limit": 10,
            "release_rate": 100000,
            "release_interval_ms": 100
        }),
    )
    .await
}

/// Creates the sale `body` describes (as `POST /v1/sales` would).
pub async fn create_sale(
    db: &PgPool,
    redis: &Pool,
    scripts: &Scripts,
    body: serde_json::Value,
) -> SaleId {
    let new: NewSale = serde_json::from_value(body).unwrap();
    let (mut def, release) = new.validate("org", Utc::now()).unwrap();
    sales::create(db, redis, scripts, &mut def, &release)
        .await
        .unwrap();
    def.id
}

/// Queues `users` and lets them all through the queue.
pub async fn admit(redis: &Pool, scripts: &Scripts, sale: SaleId, users: &[String]) {
    join_all(redis, scripts, sale, users).await;
    release_until(redis, scripts, sale, users.len() as u64).await;
}

/// Puts `users` in the sale's queue, in order.
pub async fn join_all(redis: &Pool, scripts: &Scripts, sale: SaleId, users: &[String]) {
    for u in users {
        queue::join(redis, scripts, sale, u, b"seed").await.unwrap();
    }
}

/// Runs release ticks until `count` buyers have been admitted.
pub async fn release_until(redis: &Pool, scripts: &Scripts, sale: SaleId, count: u64) {
    let mut admitted = 0;
    while admitted < count {
        match queue::release_tick(redis, scripts, sale, 300_000, 10_000)
            .await
            .unwrap()
        {
            Some(t) => admitted += t.admitted,
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Holds `qty` in `zone` for each user; returns the reservation ids.
pub async fn hold_each(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    users: &[String],
    zone: &str,
    qty: u32,
) -> Vec<ReservationId> {
    let mut ids = Vec::new();
    for u in users {
        let id = ReservationId::random(sale);
        let req = HoldRequest {
            sale,
            user: u,
            zone,
            quantity: qty,
            id: id.clone(),
            fingerprint: None,
        };
        inventory::hold(redis, scripts, req)
            .await
            .unwrap()
            .expect("hold placed");
        ids.push(id);
    }
    ids
}

/// `n` buyers each confirm `qty` tickets in `zone`; returns (user, id).
pub async fn confirmations(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    prefix: &str,
    n: usize,
    zone: &str,
    qty: u32,
) -> Vec<(String, ReservationId)> {
    let users: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    admit(redis, scripts, sale, &users).await;
    let ids = hold_each(redis, scripts, sale, &users, zone, qty).await;
    for (u, id) in users.iter().zip(&ids) {
        inventory::confirm(redis.next(), scripts, id, u, "")
            .await
            .unwrap()
            .expect("confirmed");
    }
    users.into_iter().zip(ids).collect()
}

pub fn scripts() -> Arc<Scripts> {
    Arc::new(Scripts::new())
}

/// Confirmed rows and tickets in Postgres for a sale, and the zones' `sold`.
pub async fn persisted(db: &PgPool, sale: SaleId) -> (i64, i64, i64) {
    let (rows, tickets): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(quantity), 0)::bigint FROM reservations WHERE sale_id = $1 AND status = 'confirmed'",
    )
    .bind(sale.0)
    .fetch_one(db)
    .await
    .unwrap();
    let sold: i64 =
        sqlx::query_scalar("SELECT COALESCE(SUM(sold), 0)::bigint FROM zones WHERE sale_id = $1")
            .bind(sale.0)
            .fetch_one(db)
            .await
            .unwrap();
    (rows, tickets, sold)
}

pub const JWT_SECRET: &str = "workers-test-secret-long-enough-for-hs256-0123";

/// The real API router, in this process, on 127.0.0.1:0.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub tokens: Arc<flashsale::tokens::AccessTokens>,
    pub passes: Arc<flashsale::passes::PassKeys>,
}

impl Api {
    pub async fn spawn(redis: &Pool, db: &PgPool, scripts: Arc<Scripts>) -> Self {
        use flashsale::{config::JwtConfig, http, passes, tokens};
        let tokens = Arc::new(tokens::AccessTokens::new(&JwtConfig {
            secret: JWT_SECRET.into(),
            issuer: None,
            audience: None,
            leeway_seconds: 2,
        }));
        let passes =
            Arc::new(passes::PassKeys::new(passes::SigningKey::generate("k"), vec![]).unwrap());
        let limits = flashsale::limits::LimitsConfig::unlimited();
        let state = http::AppState::from(http::AppInner {
            db: db.clone(),
            redis: redis.clone(),
            scripts,
            tokens: tokens.clone(),
            passes: passes.clone(),
            limits: Arc::new(flashsale::limits::Limits::new(&limits)),
            seeds: Arc::new(http::Seeds::default()),
            metrics: flashsale::telemetry::metrics(),
            seen_refresh_ms: 100,
            access_token_ttl: 3600,
            replication: Arc::new(flashsale::replication::Replication::off()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, http::router(state)).await.unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            tokens,
            passes,
        }
    }

    pub fn buyer(&self, user: &str) -> String {
        self.tokens
            .issue(user, flashsale::tokens::Role::Buyer, 3600)
            .unwrap()
    }

    /// A pass for `user`, signed by this API's key (as its queue would).
    pub fn pass(&self, sale: SaleId, user: &str) -> String {
        let now = flashsale::tokens::unix_now();
        self.passes
            .sign(&flashsale::passes::PassClaims {
                sub: user.into(),
                sale: sale.to_string(),
                iat: now,
                exp: now + 600,
                jti: format!("{user}-pass"),
            })
            .unwrap()
    }
}

/// A PostgreSQL cluster of the test's own, from the installed server
/// binaries, that the test can stop and start. As root, it runs as the
/// `postgres` user (the server refuses to run as root).
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts the server with these files copied into its data folder
    /// (owned by the server's user, mode 0600) and these extra settings
    /// (`-c name=value`), e.g. a certificate, its key and `ssl=on`.
    pub fn start_with_files(files: &[(&str, &[u8])], settings: &[&str]) -> Self {
        let pg = Self::init();
        for (name, bytes) in files {
            let path = pg.dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if is_root() {
                assert!(Command::new("chown")
                    .arg("postgres")
                    .arg(&path)
                    .status()
                    .unwrap()
                    .success());
            }
        }
        pg.launch_with(settings);
        pg
    }

    fn start_with(settings: &[&str]) -> Self {
        let pg = Self::init();
        pg.launch_with(settings);
        pg
    }

    fn init() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).max())
            .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/services.sh installs them)");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("fs-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let pg = Self { port, dir, bin };
        if is_root() {
            assert!(
                Command::new("chown")
                    .arg("postgres")
                    .arg(&pg.dir)
                    .status()
                    .unwrap()
                    .success(),
                "chown to postgres"
            );
        }
        pg.run(
            "initdb",
            &[
                "-D",
                pg.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        pg
    }

    fn data(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let status = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .stdout(Stdio::null())
                .status()
        } else {
            Command::new(&exe).args(args).stdout(Stdio::null()).status()
        }
        .unwrap();
        assert!(status.success(), "{tool} {args:?} failed");
    }

    pub fn launch(&self) {
        self.launch_with(&[]);
    }

    fn launch_with(&self, settings: &[&str]) {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.data()
        );
        for setting in settings {
            opts.push_str(" -c ");
            opts.push_str(setting);
        }
        let log = format!("{}/log", self.data());
        self.run(
            "pg_ctl",
            &["-D", self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", self.data(), "-m", "fast", "-w", "stop"]);
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let args = ["-D", self.data(), "-m", "immediate", "-w", "stop"];
        let _ = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        } else {
            Command::new(&exe)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}
