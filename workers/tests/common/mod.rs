//! Helpers for the workers' tests: stores, a private redis-server for tests
//! that run the real workers process or kill Redis, and sales with buyers
//! who went through the queue.

#![allow(dead_code, reason = "each test crate uses part of the harness")]

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
    replication::Replication,
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
    /// Arguments added to the defaults at every launch (`--replicaof ...`).
    args: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        Self::start_with::<&str>(&[])
    }

    /// A server started with these arguments besides the defaults, e.g.
    /// `["--replicaof", "127.0.0.1", "6380"]`; restarts keep them.
    pub fn start_with<A: AsRef<str>>(args: &[A]) -> Self {
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
            args: args.iter().map(|a| a.as_ref().to_owned()).collect(),
            child: None,
        };
        r.launch();
        r
    }

    /// A server to replicate from: a replica attaching gets its copy at
    /// once, not after the default five seconds spent waiting for others.
    pub fn start_primary() -> Self {
        Self::start_with(REPLICATION_ARGS)
    }

    /// A replica of the server on `primary_port`, AOF on like it (and ready
    /// to be a primary in turn).
    pub fn replica_of(primary_port: u16) -> Self {
        Self::start_with(&replica_args(primary_port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id while it runs (to stop it with SIGSTOP, say).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
            .args(&self.args)
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

    /// Restarts the server with these arguments instead of its own (as a
    /// replica of the new primary, after a failover).
    pub fn launch_with<A: AsRef<str>>(&mut self, args: &[A]) {
        self.args = args.iter().map(|a| a.as_ref().to_owned()).collect();
        self.launch();
    }

    /// kill -9: no shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One command through redis-cli; its reply as redis-cli prints it
    /// (one element a line).
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// Replicas attached and past their initial copy, from the server's
    /// INFO (`slave0:ip=...,state=online,offset=N`).
    pub fn replicas_online(&self) -> usize {
        self.replicas(false)
    }

    /// Replicas online that have also acknowledged everything the server
    /// wrote so far (on a server nobody else is writing to).
    pub fn replicas_caught_up(&self) -> usize {
        self.replicas(true)
    }

    fn replicas(&self, caught_up: bool) -> usize {
        let info = self.cli(&["INFO", "replication"]);
        let offset = info
            .lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:"))
            .unwrap_or_default();
        let acked = format!("offset={}", offset.trim());
        info.lines()
            .filter(|l| l.starts_with("slave"))
            .filter(|l| {
                let fields: Vec<&str> = l.split([':', ',']).collect();
                fields.contains(&"state=online") && (!caught_up || fields.contains(&acked.as_str()))
            })
            .count()
    }
}

impl PrivateRedis {
    /// `SAVE`s the dataset and copies the file aside: a backup of Redis as
    /// it is now, for [`PrivateRedis::relaunch_from`].
    pub async fn snapshot(&self, redis: &Pool) -> PathBuf {
        use fred::interfaces::ClientLike;
        let _: () = redis
            .next()
            .custom(fred::cmd!("SAVE"), Vec::<String>::new())
            .await
            .unwrap();
        let copy = self
            .dir
            .join(format!("snapshot-{}.rdb", uuid::Uuid::new_v4().simple()));
        std::fs::copy(self.dir.join("dump.rdb"), &copy).unwrap();
        copy
    }

    /// Starts the (killed) server again from an older file: the snapshot
    /// becomes its dataset and its AOF is thrown away, as when Redis comes
    /// back from a backup or a lagging replica is promoted. AOF stays off
    /// (with AOF on and no AOF file, Redis would start empty instead).
    pub fn relaunch_from(&mut self, snapshot: &std::path::Path) {
        assert!(self.child.is_none(), "kill the server first");
        let _ = std::fs::remove_dir_all(self.dir.join("appendonlydir"));
        std::fs::copy(snapshot, self.dir.join("dump.rdb")).unwrap();
        // The last of a repeated setting wins: AOF off.
        self.launch_with(&["--appendonly", "no"]);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const REPLICATION_ARGS: &[&str] = &["--repl-diskless-sync-delay", "0"];

/// The arguments of a replica of the server on `primary_port`.
pub fn replica_args(primary_port: u16) -> Vec<String> {
    let mut args: Vec<String> = REPLICATION_ARGS.iter().map(|a| a.to_string()).collect();
    args.extend([
        "--replicaof".into(),
        "127.0.0.1".into(),
        primary_port.to_string(),
    ]);
    args
}

/// `redis-cli -p port args...`; an empty string when it cannot connect.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("redis-cli is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sentinels of the test's own (`redis-server --sentinel`) watching a
/// primary as `mymaster`, on free loopback ports; killed when dropped.
pub struct Sentinels {
    pub ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Sentinels {
    pub const SERVICE: &'static str = "mymaster";

    /// `count` sentinels watching the primary on `primary_port`, quorum 2:
    /// down after 1 s without an answer, a failover given up after 5 s.
    pub fn start(primary_port: u16, count: usize) -> Self {
        let dir =
            std::env::temp_dir().join(format!("fs-sentinel-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut sentinels = Self {
            ports: Vec::new(),
            dir,
            children: Vec::new(),
        };
        for i in 0..count {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            // A file of its own: a sentinel rewrites its configuration with
            // what it learns (replicas, other sentinels, the current epoch).
            let conf = sentinels.dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\n\
                     bind 127.0.0.1\n\
                     dir {dir}\n\
                     sentinel resolve-hostnames no\n\
                     sentinel monitor {name} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 5000\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir = sentinels.dir.display(),
                    name = Self::SERVICE,
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (with --sentinel) is installed");
            sentinels.children.push(child);
            sentinels.ports.push(port);
        }
        for &port in &sentinels.ports {
            let up = (0..100).any(|_| {
                let ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
                if !ok {
                    std::thread::sleep(Duration::from_millis(50));
                }
                ok
            });
            assert!(up, "sentinel on port {port} did not start");
        }
        sentinels
    }

    /// REDIS_URL through these sentinels, in the comma-list form.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-sentinel://{}/0?sentinelServiceName={}",
            hosts.join(","),
            Self::SERVICE
        )
    }

    /// The primary's port, as the first sentinel that answers names it.
    pub fn primary_port(&self) -> Option<u16> {
        self.ports.iter().find_map(|&p| {
            let reply = redis_cli(p, &["SENTINEL", "get-master-addr-by-name", Self::SERVICE]);
            reply
                .lines()
                .nth(1)
                .and_then(|port| port.trim().parse().ok())
        })
    }

    /// Waits (up to 30 s) until every sentinel knows the others and sees
    /// `replicas` replicas of the primary in sync, so a failover can happen.
    pub async fn wait_until_watching(&self, replicas: usize) {
        for _ in 0..300 {
            if self.ports.iter().all(|&p| self.watching(p, replicas)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the sentinels did not come to see the primary, its replicas and each other");
    }

    fn watching(&self, port: u16, replicas: usize) -> bool {
        let master = fields(&redis_cli(port, &["SENTINEL", "master", Self::SERVICE]));
        let others = master
            .iter()
            .find(|(k, _)| k == "num-other-sentinels")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let reply = redis_cli(port, &["SENTINEL", "replicas", Self::SERVICE]);
        let in_sync = fields(&reply)
            .iter()
            .filter(|(k, v)| k == "master-link-status" && v == "ok")
            .count();
        others == Some(self.ports.len() - 1) && in_sync >= replicas
    }
}

/// redis-cli's flat reply (one element a line) read as field/value pairs.
fn fields(reply: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = reply.lines().map(str::trim).collect();
    lines
        .chunks(2)
        .filter(|pair| pair.len() == 2)
        .map(|pair| (pair[0].to_owned(), pair[1].to_owned()))
        .collect()
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
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
    #[allow(unsafe_code, reason = "std can only SIGKILL a child")]
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
        Self::spawn_with_replication(redis, db, scripts, Replication::off()).await
    }

    /// An API whose confirmations wait for replicas as `replication` says
    /// (CONFIRM_WAIT_REPLICAS).
    pub async fn spawn_with_replication(
        redis: &Pool,
        db: &PgPool,
        scripts: Arc<Scripts>,
        replication: Replication,
    ) -> Self {
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
            known_sales: Default::default(),
            metrics: flashsale::telemetry::metrics(),
            seen_refresh_ms: 100,
            access_token_ttl: 3600,
            replication: Arc::new(replication),
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

#[allow(unsafe_code, reason = "libc::geteuid has no safe wrapper in std")]
fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Queues `users` and waits until each is admitted, with or without a
/// releaser running elsewhere (a `Workers` process): ticks are run here too,
/// and the script decides which are due. Joins refused while the sale is
/// frozen are tried again. Bounded: panics after 30 s.
pub async fn admit_alongside_workers(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    users: &[String],
) {
    use fred::interfaces::SortedSetsInterface;
    let admitted = flashsale::keys::SaleKeys::new(sale).admitted();
    let mut joined = vec![false; users.len()];
    for _ in 0..600 {
        for (u, j) in users.iter().zip(joined.iter_mut()) {
            if !*j {
                *j = queue::join(redis, scripts, sale, u, b"seed").await.is_ok();
            }
        }
        let _ = queue::release_tick(redis, scripts, sale, 300_000, 10_000).await;
        // One score per buyer, nil for one not (yet) admitted.
        let scores: Option<fred::types::Value> =
            redis.zmscore(&admitted, users.to_vec()).await.ok();
        let all_in = scores.is_some_and(|v| {
            let v = v.into_array();
            v.len() == users.len() && v.iter().all(|s| !s.is_null())
        });
        if joined.iter().all(|j| *j) && all_in {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("buyers were not admitted within 30 s");
}
