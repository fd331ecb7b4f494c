//! The `flashsale` binary: the API server and its operator commands.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool prints its results"
)]

use anyhow::Context;
use chrono::Utc;
use clap::{Parser, Subcommand};
use flashsale::{config::Config, sales, telemetry, tokens::Role};

#[derive(Parser)]
#[command(version, about = "Flash-sale ticketing with a fair virtual queue")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API on LISTEN_ADDR.
    Serve,
    /// Apply the Postgres migrations in `migrations/`.
    Migrate,
    /// Print a signed access token (for operators, organizers and load tests).
    Token {
        /// The user id the token names (`sub`).
        #[arg(long)]
        sub: String,
        /// Print this many tokens, one a line, for users `<sub>-0` to
        /// `<sub>-<count-1>` (load tests need many buyers).
        #[arg(long)]
        count: Option<u32>,
        /// `buyer` or `organizer`.
        #[arg(long, default_value = "buyer")]
        role: Role,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Recompute a sale's pre-queue order from the organizer's export
    /// (`GET /v1/sales/{id}/prequeue`, saved as JSON): prints the early
    /// buyers' ids in queue order, one a line. Needs no server or store.
    PrequeueOrder {
        /// The export file (`-` for standard input).
        #[arg(long)]
        export: String,
        /// The seed (hex), if not taken from the export itself.
        #[arg(long)]
        seed: Option<String>,
    },
    /// Load-test setup: queue `count` buyers `<prefix>-0..` in a sale, let
    /// them through the queue (the sale's release settings permitting), and
    /// write one line per buyer: `<access token> <queue pass>`.
    PrepareBuyers {
        #[arg(long)]
        sale: String,
        #[arg(long)]
        count: u32,
        #[arg(long, default_value = "buyer")]
        prefix: String,
        /// Output file.
        #[arg(long)]
        out: String,
        /// Only join the queue and leave the buyers waiting; the file then
        /// holds one access token a line.
        #[arg(long)]
        wait: bool,
    },
    /// Create an account (organizers are created only this way). The
    /// password comes from FLASHSALE_PASSWORD, else the first line of
    /// standard input. Prints the new user id.
    AddUser {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "organizer")]
        role: Role,
    },
    /// Rebuild a frozen sale's Redis state from Postgres after Redis lost it
    /// or went back in time (confirmed reservations stand, holds and the
    /// queue start afresh). Waits for the workers' sink to bring the
    /// stream's last entries into Postgres first.
    Restore {
        #[arg(long)]
        sale: String,
        /// Freeze the sale first if it is not frozen (buyers get 503
        /// sale_frozen until the rebuild is done); without it, a sale that
        /// is not frozen is refused.
        #[arg(long)]
        freeze: bool,
        /// Seconds to wait for the stream to drain into Postgres.
        #[arg(long, default_value_t = 60)]
        drain_wait_seconds: u64,
    },
    /// Create a demo sale that opens now, owned by the demo organizer
    /// account; create (or reset) that account and a demo buyer's; print
    /// the pages to open, the accounts' passwords, and tokens and curl
    /// commands to try the API.
    Demo {
        /// Base URL the printed commands use.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base_url: String,
    },
}

/// mimalloc: the request path allocates many small, short-lived objects, and
/// glibc's malloc is a large share of the API's CPU on them under load
/// (load/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::PrequeueOrder { export, seed } = &cli.command {
        return prequeue_order(export, seed.as_deref());
    }
    let config = Config::from_env()?;
    telemetry::init_tracing(config.log_format);
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let db = flashsale::db::connect(&config.database_url, 2, config.store_timeout).await?;
            flashsale::db::migrate(&db).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Token {
            sub,
            count,
            role,
            ttl,
        } => {
            config.require_real_jwt_secret()?;
            let tokens = flashsale::tokens::AccessTokens::new(&config.jwt);
            match count {
                None => println!("{}", tokens.issue(&sub, role, ttl)?),
                Some(n) => {
                    let mut out = String::new();
                    for i in 0..n {
                        out.push_str(&tokens.issue(&format!("{sub}-{i}"), role, ttl)?);
                        out.push('\n');
                    }
                    print!("{out}");
                }
            }
            Ok(())
        }
        Command::Demo { base_url } => demo(config, &base_url).await,
        Command::AddUser { email, role } => {
            let password = match std::env::var("FLASHSALE_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("read the password from standard input")?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            let db = flashsale::db::connect(&config.database_url, 2, config.store_timeout).await?;
            let email = flashsale::accounts::Email::parse(&email).context("--email")?;
            let password =
                flashsale::accounts::Password::parse(&password).context("the password")?;
            let id = flashsale::accounts::register(&db, &email, password, role)
                .await
                .context("create the account")?;
            println!("{id}");
            Ok(())
        }
        Command::Restore {
            sale,
            freeze,
            drain_wait_seconds,
        } => {
            let state = flashsale::http::AppState::build(&config).await?;
            let sale = sale.parse().context("--sale is not a sale id")?;
            let options = flashsale::recovery::Options {
                freeze,
                drain_wait: std::time::Duration::from_secs(drain_wait_seconds),
            };
            let done = flashsale::recovery::restore(
                &state.db,
                &state.redis,
                &state.scripts,
                sale,
                options,
            )
            .await?;
            println!(
                "sale {sale} restored: epoch {}, {} confirmed reservations ({} tickets)",
                done.epoch, done.reservations, done.tickets
            );
            Ok(())
        }
        Command::PrepareBuyers {
            sale,
            count,
            prefix,
            out,
            wait,
        } => prepare_buyers(config, &sale, count, &prefix, &out, wait).await,
        Command::PrequeueOrder { .. } => unreachable!("handled before configuration"),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    config.require_real_secrets()?;
    if config.uses_dev_secret() {
        tracing::warn!("JWT_SECRET is not set: using the built-in development secret (FLASHSALE_ENV=development)");
    }
    let state = flashsale::http::AppState::build(&config).await?;
    flashsale::redis::check_eviction_policy(&state.redis).await;
    // Event streams never finish on their own: they end when this is cancelled.
    let streams = state.shutdown.clone();
    let app = flashsale::http::router(state);
    let listener = flashsale::server::bind(config.listen_addr, config.server.backlog)
        .with_context(|| format!("bind {}", config.listen_addr))?;
    let addr = listener.local_addr().context("read the bound address")?;
    tracing::info!(addr = %addr, "flashsale API listening");
    let stopping = async move {
        flashsale::shutdown_signal().await;
        streams.cancel();
    };
    flashsale::server::serve(listener, app, config.server, stopping).await;
    tracing::info!("flashsale API stopped");
    Ok(())
}

/// Prints the pre-queue order an export and its seed imply, after checking
/// the seed against its published SHA-256.
fn prequeue_order(export: &str, seed: Option<&str>) -> anyhow::Result<()> {
    let text = if export == "-" {
        std::io::read_to_string(std::io::stdin()).context("read the export from standard input")?
    } else {
        std::fs::read_to_string(export).with_context(|| format!("read {export}"))?
    };
    let doc: serde_json::Value = serde_json::from_str(&text).context("the export is not JSON")?;
    let seed = match seed {
        Some(s) => s.to_owned(),
        None => doc["seed"]
            .as_str()
            .context("the export has no `seed`; pass --seed")?
            .to_owned(),
    };
    if let Some(published) = doc["seed_sha256"].as_str() {
        anyhow::ensure!(
            flashsale::queue::seed_commitment(&seed) == published,
            "the seed does not match its published SHA-256 {published}"
        );
    }
    let buyers: Vec<String> = serde_json::from_value(doc["buyers"].clone())
        .context("the export's `buyers` is not a list of ids")?;
    let seed = hex::decode(&seed).context("the seed is not hex")?;
    for buyer in flashsale::queue::prequeue_order(&seed, &buyers) {
        println!("{buyer}");
    }
    Ok(())
}

async fn prepare_buyers(
    config: Config,
    sale: &str,
    count: u32,
    prefix: &str,
    out: &str,
    wait: bool,
) -> anyhow::Result<()> {
    use flashsale::{passes::PassClaims, queue};
    use futures::{StreamExt, TryStreamExt};
    config.require_real_secrets()?;
    let state = flashsale::http::AppState::build(&config).await?;
    let sale: flashsale::ids::SaleId = sale.parse().context("--sale is not a sale id")?;
    let seed = state
        .seeds
        .get(&state.redis, sale)
        .await
        .context("read the sale's pre-queue seed")?;
    let buyers: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    // In order, 64 at a time: places follow the buyers' numbers closely.
    futures::stream::iter(&buyers)
        .map(|b| {
            let state = &state;
            let seed = &seed;
            async move {
                queue::join(&state.redis, &state.scripts, sale, b, seed)
                    .await
                    .with_context(|| format!("join {b}"))
            }
        })
        .buffered(64)
        .try_collect::<Vec<_>>()
        .await?;
    let mut lines = String::new();
    if wait {
        for b in &buyers {
            lines.push_str(&state.tokens.issue(b, Role::Buyer, 3600)?);
            lines.push('\n');
        }
        std::fs::write(out, lines).with_context(|| format!("write {out}"))?;
        eprintln!("{count} buyers waiting in the queue of sale {sale}; tokens in {out}");
        return Ok(());
    }
    for b in &buyers {
        let since = std::time::Instant::now();
        let deadline = loop {
            match queue::status(&state.redis, &state.scripts, sale, b, 1_000)
                .await
                .with_context(|| format!("poll for {b}"))?
            {
                queue::Standing::Admitted { deadline_ms, .. } => break deadline_ms,
                queue::Standing::Waiting { .. } if since.elapsed().as_secs() >= 30 => {
                    anyhow::bail!(
                        "{b} is still waiting after 30 s: the releaser admits no more buyers \
                         than the sale has tickets left (or the sale is paused, closed or at \
                         its max_active); give the sale more tickets or prepare fewer buyers"
                    )
                }
                queue::Standing::Waiting { .. } => {
                    queue::release_tick(&state.redis, &state.scripts, sale, 3_600_000, 5_000)
                        .await
                        .context("release tick")?;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => anyhow::bail!("{b} cannot be admitted: {other:?}"),
            }
        };
        let pass = state.passes.sign(&PassClaims {
            sub: b.clone(),
            sale: sale.to_string(),
            iat: flashsale::tokens::unix_now(),
            exp: (deadline / 1000) as u64,
            jti: queue::pass_id(sale, b, deadline),
        })?;
        let token = state.tokens.issue(b, Role::Buyer, 3600)?;
        lines.push_str(&format!("{token} {pass}\n"));
    }
    std::fs::write(out, lines).with_context(|| format!("write {out}"))?;
    eprintln!("{count} buyers admitted to sale {sale}; tokens and passes in {out}");
    Ok(())
}

/// The demo's accounts: an organizer who owns the demo sale (and sees it in
/// the console) and a buyer.
const DEMO_ORGANIZER: &str = "organizer@demo.flashsale";
const DEMO_BUYER: &str = "buyer@demo.flashsale";

/// A demo account's password: derived from the token secret, so every run
/// prints the same one for a deployment and nobody can guess it without the
/// secret. Each run sets it again, so it is right even after the secret
/// changed.
fn demo_password(secret: &str, email: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(b"flashsale demo account password\0");
    mac.update(email.as_bytes());
    format!("demo-{}", hex::encode(&mac.finalize().into_bytes()[..8]))
}

/// Creates (or resets) a demo account; its id and password.
async fn demo_account(
    config: &Config,
    db: &sqlx::PgPool,
    email: &str,
    role: Role,
) -> anyhow::Result<(uuid::Uuid, String)> {
    use flashsale::accounts::{self, Email, Password};
    let password = demo_password(&config.jwt.secret, email);
    let id = accounts::ensure(
        db,
        &Email::parse(email).context("the demo email")?,
        Password::parse(&password).context("the demo password")?,
        role,
    )
    .await
    .with_context(|| format!("create the demo account {email}"))?;
    Ok((id, password))
}

async fn demo(config: Config, base_url: &str) -> anyhow::Result<()> {
    config.require_real_jwt_secret()?;
    let state = flashsale::http::AppState::build(&config).await?;
    let (organizer, organizer_password) =
        demo_account(&config, &state.db, DEMO_ORGANIZER, Role::Organizer).await?;
    let (buyer_id, buyer_password) =
        demo_account(&config, &state.db, DEMO_BUYER, Role::Buyer).await?;
    // Stalls: rows A to H of 16 numbers, 8 and 9 the aisle.
    let stalls: Vec<serde_json::Value> = ('A'..='H')
        .map(|row| serde_json::json!({"row": row.to_string(), "seats": 16, "missing": [8, 9]}))
        .collect();
    let new_sale: sales::NewSale = serde_json::from_value(serde_json::json!({
        "name": "Demo night - Berlin",
        "zones": [
            {"code": "FLOOR", "name": "Floor", "capacity": 100, "price_cents": 8900},
            {"code": "BALCONY", "name": "Balcony", "capacity": 40, "price_cents": 12900},
            {"code": "STALLS", "name": "Stalls", "price_cents": 6900, "seating": {"rows": stalls}}
        ],
        "per_user_limit": 4,
        "hold_ttl_seconds": 300
    }))?;
    let (mut def, release) = new_sale
        .validate(&organizer.to_string(), Utc::now())
        .context("the demo sale's settings")?;
    sales::create(&state.db, &state.redis, &state.scripts, &mut def, &release)
        .await
        .context("create demo sale")?;
    let buyer = state
        .tokens
        .issue(&buyer_id.to_string(), Role::Buyer, 24 * 3600)?;
    let org = state
        .tokens
        .issue(&organizer.to_string(), Role::Organizer, 24 * 3600)?;
    let id = def.id;
    println!(
        r#"
Demo sale created: {id}  (zones FLOOR: 100 tickets, BALCONY: 40, STALLS: 112 seats)

In a browser:
  buyers:     {base_url}/                 (open sales; register, or sign in as the demo buyer)
  the sale:   {base_url}/sales/{id}
  organizer:  {base_url}/console          (the demo sale is the organizer's)
  API docs:   {base_url}/docs

  organizer:  {DEMO_ORGANIZER}  password {organizer_password}
  buyer:      {DEMO_BUYER}  password {buyer_password}

With curl (the same accounts):

  export SALE={id}
  export BUYER={buyer}
  export ORGANIZER={org}

  # the sale, with live stock
  curl -s {base_url}/v1/sales/$SALE
  # join the virtual queue, then poll: within a second the releaser admits you
  # and the answer carries your queue pass
  curl -s -X POST {base_url}/v1/sales/$SALE/queue -H "Authorization: Bearer $BUYER"
  curl -s {base_url}/v1/sales/$SALE/queue -H "Authorization: Bearer $BUYER"
  export PASS=<the "pass" from the answer above>
  # hold two Floor tickets
  curl -s -X POST {base_url}/v1/sales/$SALE/reservations \
       -H "Authorization: Bearer $BUYER" -H "X-Queue-Pass: $PASS" \
       -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' \
       -d '{{"zone":"FLOOR","quantity":2}}'
  # confirm it (use the id from the answer above)
  curl -s -X POST {base_url}/v1/reservations/<id>/confirm -H "Authorization: Bearer $BUYER"
  # your reservations
  curl -s {base_url}/v1/me/reservations -H "Authorization: Bearer $BUYER"
  # organizer: the sale's figures, and pausing the release
  curl -s {base_url}/v1/sales/$SALE/stats -H "Authorization: Bearer $ORGANIZER"
  curl -s -X PATCH {base_url}/v1/sales/$SALE -H "Authorization: Bearer $ORGANIZER" \
       -H 'Content-Type: application/json' -d '{{"paused":true}}'
"#
    );
    Ok(())
}
