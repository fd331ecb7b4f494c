//! Redis servers of a test's own: a private `redis-server` (AOF on, as
//! production runs it), replicas of it, and sentinels watching it, each on
//! free loopback ports and a folder of its own, killed when dropped.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fred::clients::Pool;

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

/// A Redis Cluster of the test's own: `primaries` servers with
/// `--cluster-enabled yes` and AOF on, each with `replicas_each` replicas,
/// on free loopback ports, joined by `redis-cli --cluster create`; killed
/// when dropped.
pub struct RedisCluster {
    pub nodes: Vec<PrivateRedis>,
}

impl RedisCluster {
    /// `primaries` primaries with no replicas.
    pub fn start(primaries: usize) -> Self {
        Self::start_with_replicas(primaries, 0)
    }

    /// `primaries` primaries, each with `replicas_each` replicas (a
    /// replica takes over when its primary fails: node timeout 2 s).
    pub fn start_with_replicas(primaries: usize, replicas_each: usize) -> Self {
        let nodes: Vec<PrivateRedis> = (0..primaries * (1 + replicas_each))
            .map(|_| {
                PrivateRedis::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--repl-diskless-sync-delay",
                    "0",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args([
                "--cluster-replicas",
                &replicas_each.to_string(),
                "--cluster-yes",
            ])
            .stderr(Stdio::piped())
            .output()
            .expect("redis-cli is installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_until_ok();
        cluster
    }

    /// Waits (up to 30 s) until every running node says `cluster_state:ok`
    /// and agrees on the slots' owners.
    pub fn wait_until_ok(&self) {
        for _ in 0..300 {
            let ok = self
                .nodes
                .iter()
                .filter(|n| n.pid().is_some())
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if ok {
                let views: std::collections::HashSet<Vec<(u16, u16, u16)>> = self
                    .nodes
                    .iter()
                    .filter(|n| n.pid().is_some())
                    .map(|n| slot_ranges(&n.cli(&["CLUSTER", "SHARDS"])))
                    .collect();
                if views.len() == 1 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the cluster did not come to cluster_state:ok");
    }

    /// REDIS_URL in the comma-list form a user writes.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis-cluster://{}", hosts.join(","))
    }

    /// The ports of the nodes that serve slots now, as a running node sees it.
    pub fn primaries(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .slot_owners()
            .into_iter()
            .map(|(_, _, port)| port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The port of the primary serving `key`'s slot; while a failover is
    /// under way (no primary online for it), waits up to 30 s for one.
    pub fn primary_for(&self, key: &str) -> u16 {
        for _ in 0..300 {
            if let Some(port) = self.owner_of(key) {
                return port;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no primary took {key}'s slot within 30 s");
    }

    /// The port of the primary serving `key`'s slot, as a running node sees
    /// it now; `None` while none is online for it.
    pub fn owner_of(&self, key: &str) -> Option<u16> {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        self.slot_owners()
            .into_iter()
            .find(|&(start, end, _)| (start..=end).contains(&slot))
            .map(|(_, _, port)| port)
    }

    /// The node on `port`.
    pub fn node(&mut self, port: u16) -> &mut PrivateRedis {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    fn slot_owners(&self) -> Vec<(u16, u16, u16)> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.pid().is_some())
            .expect("a running node");
        slot_ranges(&node.cli(&["CLUSTER", "SHARDS"]))
    }
}

/// The slot ranges and their primary's port from `CLUSTER SHARDS` as
/// redis-cli prints it (one element a line): each shard's `slots` list,
/// then its nodes, of which the one with `role` `master` and `health`
/// `online` serves them.
fn slot_ranges(reply: &str) -> Vec<(u16, u16, u16)> {
    let lines: Vec<&str> = reply.lines().map(str::trim).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i] == "slots" {
            // The slot bounds come in pairs until the "nodes" key.
            let mut bounds = Vec::new();
            i += 1;
            while i < lines.len() && lines[i] != "nodes" {
                if let Ok(n) = lines[i].parse::<u16>() {
                    bounds.push(n);
                }
                i += 1;
            }
            // The nodes: field/value pairs; port, role and health per node.
            let mut port = None;
            let mut owner = None;
            let mut role_master = false;
            while i < lines.len() && lines[i] != "slots" {
                match lines[i] {
                    "port" => port = lines.get(i + 1).and_then(|p| p.parse::<u16>().ok()),
                    "role" => role_master = lines.get(i + 1) == Some(&"master"),
                    "health" if role_master && lines.get(i + 1) == Some(&"online") => {
                        owner = port;
                    }
                    _ => {}
                }
                i += 1;
            }
            if let Some(owner) = owner {
                for pair in bounds.chunks(2) {
                    if let [start, end] = pair {
                        out.push((*start, *end, owner));
                    }
                }
            }
        } else {
            i += 1;
        }
    }
    out.sort_unstable();
    out
}
