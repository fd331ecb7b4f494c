//! Replicated confirmations: a buyer is told a confirmation (or the
//! cancellation of a confirmed reservation) is done only once
//! `CONFIRM_WAIT_REPLICAS` replicas have it, so a failover to one of them
//! loses nothing a buyer was told.
//!
//! Redis replicates asynchronously; `WAIT n ms` blocks until `n` replicas
//! acknowledged every write made *on the connection it is sent on*. So the
//! script and its WAIT run on one connection, taken from a pool of their own:
//! WAIT holds its connection (Redis runs nothing else from it meanwhile), and
//! holds and polls must not queue behind a replica that is slow or gone.
//!
//! A retried confirmation replays: the script answers the confirmed
//! reservation and writes nothing. Since Redis 7.2 a connection's WAIT offset
//! moves only with its own writes (before, with every command), so on another
//! connection than the first attempt's, WAIT could pass at once while the
//! confirmation is still unreplicated. A replay therefore first publishes to
//! a channel nobody listens to: PUBLISH writes no key but is replicated,
//! which moves the connection's offset past the first attempt's write; the
//! WAIT that follows covers it.
//!
//! On a Redis Cluster a client holds one connection to each primary, and a
//! command without a key (WAIT, PUBLISH) would go to any of them: both are
//! sent to the slot of the sale whose keys the script wrote, so they run on
//! the connection, and the shard, that made the change.
//!
//! Invariant: with `CONFIRM_WAIT_REPLICAS=0` (the default) nothing here
//! sends a command, and confirmations share the main pool as before.

use std::time::{Duration, Instant};

use fred::{
    clients::{Client, Pool},
    interfaces::{ClientLike, PubsubInterface, ServerInterface},
    types::{config::Options, ClusterHash},
};

use crate::error::{ApiError, ApiResult};
use crate::ids::SaleId;
use crate::keys::SaleKeys;

/// The channel a replayed change publishes to, to make a write of its own
/// that WAIT then waits for (see the module doc). Nobody subscribes.
const PROBE_CHANNEL: &str = "flashsale:replication-probe";

/// What a buyer is waiting to hear is replicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Confirmation,
    Cancellation,
}

impl Change {
    fn label(self) -> &'static str {
        match self {
            Change::Confirmation => "confirm",
            Change::Cancellation => "cancel",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Change::Confirmation => "confirmation",
            Change::Cancellation => "cancellation",
        }
    }
}

/// How many replicas must acknowledge a change, how long to wait for them,
/// and the connections to do it on.
pub struct Replication {
    replicas: u32,
    timeout: Duration,
    /// fred's limit on the WAIT command: the wait itself plus what any Redis
    /// call may take, so fred never gives up before Redis answers.
    command_timeout: Duration,
    /// The confirmations' own connections; `None` when nothing is awaited.
    pool: Option<Pool>,
}

impl Replication {
    /// Nothing is awaited: confirmations are answered as soon as the primary
    /// has them.
    pub fn off() -> Self {
        Self {
            replicas: 0,
            timeout: Duration::ZERO,
            command_timeout: Duration::ZERO,
            pool: None,
        }
    }

    /// Waits for `replicas` replicas (at most `timeout`) on `pool`, a pool
    /// used for nothing else.
    pub fn new(replicas: u32, timeout: Duration, store_timeout: Duration, pool: Pool) -> Self {
        if replicas == 0 {
            return Self::off();
        }
        Self {
            replicas,
            timeout,
            command_timeout: timeout + store_timeout,
            pool: Some(pool),
        }
    }

    /// From the configuration: connects the confirmations' pool when
    /// `CONFIRM_WAIT_REPLICAS` is above 0.
    pub async fn connect(config: &crate::config::Config) -> anyhow::Result<Self> {
        if config.confirm_wait_replicas == 0 {
            return Ok(Self::off());
        }
        let pool = crate::redis::connect_with_ca(
            &config.redis_url,
            config.redis_pool_size,
            config.store_timeout,
            config.redis_tls_ca.as_deref(),
        )
        .await?;
        Ok(Self::new(
            config.confirm_wait_replicas,
            config.confirm_wait_timeout,
            config.store_timeout,
            pool,
        ))
    }

    /// Replicas that must acknowledge a change (0: none awaited).
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// The connection a confirmation or cancellation runs on; `acknowledged`
    /// must then be given the same one.
    pub fn connection<'a>(&'a self, main: &'a Pool) -> &'a Client {
        self.pool.as_ref().unwrap_or(main).next()
    }

    /// Returns once the configured number of replicas have every write made
    /// on `client` so far (at once when none is configured); else
    /// `NotReplicated` after the timeout. `replayed`: the change was made by
    /// an earlier call, maybe on another connection. `sale`: whose keys the
    /// change wrote (on a cluster, the shard to ask).
    pub async fn acknowledged(
        &self,
        client: &Client,
        sale: SaleId,
        change: Change,
        replayed: bool,
    ) -> ApiResult<()> {
        if self.replicas == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let slot = fred::util::redis_keyslot(SaleKeys::new(sale).meta().as_bytes());
        let client = client.with_options(&Options {
            timeout: Some(self.command_timeout),
            cluster_hash: Some(ClusterHash::Custom(slot)),
            ..Default::default()
        });
        if replayed {
            // Boxed, as every fred call on a request path: its future is
            // kilobytes.
            let _: i64 = Box::pin(client.publish(PROBE_CHANNEL, "")).await?;
        }
        let acked: i64 =
            Box::pin(client.wait(i64::from(self.replicas), self.timeout.as_millis() as i64))
                .await?;
        metrics::histogram!("flashsale_confirm_replication_wait_seconds", "change" => change.label())
            .record(started.elapsed().as_secs_f64());
        if acked >= i64::from(self.replicas) {
            return Ok(());
        }
        metrics::counter!("flashsale_confirm_replication_timeouts_total", "change" => change.label())
            .increment(1);
        tracing::warn!(
            change = change.noun(),
            acked,
            wanted = self.replicas,
            timeout_ms = self.timeout.as_millis() as u64,
            "change not acknowledged by enough replicas in time; the buyer is told to retry"
        );
        Err(ApiError::NotReplicated {
            what: change.noun(),
        })
    }
}
