//! The Lua scripts, loaded once and called by SHA.
//!
//! Each script lives in `lua/` (one per file, with a header naming KEYS, ARGV
//! and the result) and is compiled into the binary; a few share a function
//! from `lua/lib/`, prepended to their source. Calls go by EVALSHA; when
//! Redis answers NOSCRIPT (a restart, a failover, `SCRIPT FLUSH`) the call is
//! repeated once with EVAL, which also puts the script back in the cache, so
//! no client ever sees the miss.

use std::future::Future;

use fred::{
    clients::{Client, Pool},
    interfaces::LuaInterface,
    prelude::{Error, FromValue},
    types::Value,
};

pub struct Script {
    pub name: &'static str,
    source: &'static str,
    sha: String,
}

impl Script {
    fn new(name: &'static str, source: &'static str) -> Self {
        Self {
            name,
            source,
            sha: fred::util::sha1_hash(source),
        }
    }

    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// Runs the script by SHA, reloading it if Redis no longer has it.
    /// `run_on`'s own future, not one wrapped around it: no extra state to
    /// poll on every script call.
    pub fn run<'a, R: FromValue + 'a>(
        &'a self,
        redis: &'a Pool,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> impl Future<Output = Result<R, Error>> + 'a {
        self.run_on(redis.next(), keys, args)
    }

    /// Runs the script on one given connection, for a caller that sends
    /// another command after it on the same connection (WAIT covers only the
    /// writes of the connection it is sent on).
    pub async fn run_on<R: FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R, Error> {
        // Boxed: fred's command future is kilobytes (about 5 KB, 7 KB with
        // TLS compiled in). Inline, every handler's future would carry it,
        // and copy it whole each time that future is moved or boxed.
        match Box::pin(client.evalsha::<R, _, _, _>(self.sha.as_str(), keys.clone(), args.clone()))
            .await
        {
            Err(err) if err.details().contains("NOSCRIPT") => {
                metrics::counter!("flashsale_script_reloads_total", "script" => self.name)
                    .increment(1);
                tracing::info!(script = self.name, "script missing from Redis, reloading");
                Box::pin(client.eval::<R, _, _, _>(self.source, keys, args)).await
            }
            other => other,
        }
    }
}

/// Every script the service runs.
pub struct Scripts {
    pub load_sale: Script,
    pub hold: Script,
    pub confirm: Script,
    pub cancel: Script,
    pub due_holds: Script,
    pub expire: Script,
    pub join: Script,
    pub status: Script,
    pub leave: Script,
    pub release: Script,
    pub trim_stream: Script,
    pub reconcile_read: Script,
    pub set_release: Script,
    pub check_rate_limit: Script,
    pub watch: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            load_sale: Script::new("load_sale", include_str!("../lua/load_sale.lua")),
            hold: Script::new(
                "hold_tickets",
                concat!(
                    include_str!("../lua/lib/seats.lua"),
                    include_str!("../lua/hold_tickets.lua")
                ),
            ),
            confirm: Script::new(
                "confirm_hold",
                concat!(
                    include_str!("../lua/lib/seats.lua"),
                    include_str!("../lua/lib/return_tickets.lua"),
                    include_str!("../lua/confirm_hold.lua")
                ),
            ),
            cancel: Script::new(
                "cancel_reservation",
                concat!(
                    include_str!("../lua/lib/seats.lua"),
                    include_str!("../lua/lib/return_tickets.lua"),
                    include_str!("../lua/cancel_reservation.lua")
                ),
            ),
            due_holds: Script::new("due_holds", include_str!("../lua/due_holds.lua")),
            expire: Script::new(
                "expire_holds",
                concat!(
                    include_str!("../lua/lib/seats.lua"),
                    include_str!("../lua/lib/return_tickets.lua"),
                    include_str!("../lua/expire_holds.lua")
                ),
            ),
            join: Script::new(
                "join_queue",
                concat!(
                    include_str!("../lua/lib/queue_place.lua"),
                    include_str!("../lua/join_queue.lua")
                ),
            ),
            status: Script::new(
                "queue_status",
                concat!(
                    include_str!("../lua/lib/queue_place.lua"),
                    include_str!("../lua/queue_status.lua")
                ),
            ),
            leave: Script::new("leave_queue", include_str!("../lua/leave_queue.lua")),
            release: Script::new(
                "release_batch",
                concat!(
                    include_str!("../lua/lib/queue_place.lua"),
                    include_str!("../lua/release_batch.lua")
                ),
            ),
            trim_stream: Script::new("trim_stream", include_str!("../lua/trim_stream.lua")),
            reconcile_read: Script::new(
                "reconcile_read",
                include_str!("../lua/reconcile_read.lua"),
            ),
            set_release: Script::new("set_release", include_str!("../lua/set_release.lua")),
            check_rate_limit: Script::new(
                "check_rate_limit",
                include_str!("../lua/check_rate_limit.lua"),
            ),
            watch: Script::new("watch_sale", include_str!("../lua/watch_sale.lua")),
        }
    }

    fn all(&self) -> [&Script; 15] {
        [
            &self.load_sale,
            &self.hold,
            &self.confirm,
            &self.cancel,
            &self.due_holds,
            &self.expire,
            &self.join,
            &self.status,
            &self.leave,
            &self.release,
            &self.trim_stream,
            &self.reconcile_read,
            &self.set_release,
            &self.check_rate_limit,
            &self.watch,
        ]
    }

    /// Loads every script into Redis's cache (SCRIPT LOAD), so the first
    /// request does not pay for it. Checks Redis agrees on each SHA.
    pub async fn load(&self, redis: &Pool) -> anyhow::Result<()> {
        for script in self.all() {
            for client in redis.clients() {
                let sha: String = client.script_load(script.source).await?;
                anyhow::ensure!(
                    sha == script.sha,
                    "redis hashed script {} as {sha}, expected {}",
                    script.name,
                    script.sha
                );
            }
        }
        Ok(())
    }
}
