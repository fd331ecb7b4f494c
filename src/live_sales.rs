//! The sales Redis holds, as the workers and a buyer's reservations list
//! find them.
//!
//! One set would sit on one Redis Cluster shard: every worker on every
//! replica would read that shard each tick, and its failover would hide
//! every sale at once. The ids are spread instead over [`SETS`] sets, each
//! under its own hash tag (`flashsale:sales:{0}` … `{f}`), so the sets fall
//! on slots all over a cluster. A sale's set is fixed by its id. Reading the
//! list is [`SETS`] `SMEMBERS`, sent at once. No script touches these sets:
//! they are written beside a sale's scripts, never inside them, so no script
//! assumes they share a slot with a sale's keys.
//!
//! A Redis written by an earlier layout keeps its ids in the one set
//! `flashsale:sales`; the workers move them into their sets
//! ([`adopt_legacy`]) before they list the sales.

use fred::clients::Pool;
use fred::interfaces::SetsInterface;
use futures::future::try_join_all;

use crate::ids::SaleId;

/// How many sets the ids are spread over: enough to spread over the shards
/// of any cluster this service meets, few enough to read every tick.
pub const SETS: u8 = 16;

/// The one set of the earlier layout.
pub const LEGACY_SET: &str = "flashsale:sales";

/// The set that lists `sale`: chosen by the id's first byte (v4 ids are
/// random, so the sets fill evenly).
pub fn set_of(sale: SaleId) -> String {
    set(sale.0.as_bytes()[0] % SETS)
}

/// Every set's key, in order.
pub fn sets() -> impl Iterator<Item = String> {
    (0..SETS).map(set)
}

fn set(n: u8) -> String {
    format!("flashsale:sales:{{{n:x}}}")
}

/// Lists `sale`, so the workers visit it.
pub async fn add(redis: &Pool, sale: SaleId) -> Result<(), fred::error::Error> {
    let _: i64 = redis.sadd(set_of(sale), sale.to_string()).await?;
    Ok(())
}

/// Takes `sale` off the list (and off the earlier layout's set).
pub async fn remove(redis: &Pool, sale: SaleId) -> Result<(), fred::error::Error> {
    let _: i64 = redis.srem(set_of(sale), sale.to_string()).await?;
    let _: i64 = redis.srem(LEGACY_SET, sale.to_string()).await?;
    Ok(())
}

/// Whether `sale` is listed.
pub async fn contains(redis: &Pool, sale: SaleId) -> Result<bool, fred::error::Error> {
    redis.sismember(set_of(sale), sale.to_string()).await
}

/// Every listed sale, skipping any member that is not a sale id.
pub async fn all(redis: &Pool) -> Result<Vec<SaleId>, fred::error::Error> {
    let members: Vec<Vec<String>> =
        try_join_all(sets().map(|key| async move { redis.smembers(key).await })).await?;
    Ok(members
        .iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
        .collect())
}

/// Moves the ids found in the earlier layout's set into their own sets (an
/// API of that layout may still be adding to it while it is replaced). The
/// workers run it before each listing; a read never writes.
pub async fn adopt_legacy(redis: &Pool) -> Result<(), fred::error::Error> {
    let legacy: Vec<String> = redis.smembers(LEGACY_SET).await?;
    for member in &legacy {
        if let Ok(sale) = member.parse::<SaleId>() {
            add(redis, sale).await?;
        }
        let _: i64 = redis.srem(LEGACY_SET, member.as_str()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sets_fall_on_distinct_slots_and_a_sale_always_finds_the_same_one() {
        let keys: Vec<String> = sets().collect();
        assert_eq!(keys.len(), usize::from(SETS));
        let slots: std::collections::HashSet<u16> = keys
            .iter()
            .map(|k| fred::util::redis_keyslot(k.as_bytes()))
            .collect();
        assert_eq!(slots.len(), keys.len(), "{keys:?}");
        let sale = SaleId::new();
        assert_eq!(set_of(sale), set_of(sale));
        assert!(keys.contains(&set_of(sale)));
    }
}
