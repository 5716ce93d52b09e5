//! The Redis client setup Switchboard's Redis plugins share (`presence.plugin = "redis"`,
//! `broker.plugin = "redis"`): not a plugin itself.
//!
//! Every connection reconnects forever with exponential back-off, bounds connecting and
//! every command by one timeout, and never replays a command that was in flight when its
//! connection dropped: a replayed `PUBLISH` would deliver twice, a replayed presence script
//! would answer "not first" for a first connection.

use std::time::Duration;

use fred::prelude::{Builder, Config, Error, ReconnectPolicy};

/// How a plugin's Redis connections behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Longest wait between two reconnection attempts (they start at 100 ms and double).
    pub reconnect_max_delay: Duration,
    /// Limit on connecting and on every command.
    pub command_timeout: Duration,
    /// Capacity of the client's pub/sub message channel; fred's default when `None`.
    pub broadcast_capacity: Option<usize>,
}

/// A fred builder for `url` with `settings`; an error names what is wrong with the URL.
pub fn builder(url: &str, settings: &Settings) -> Result<Builder, Error> {
    let config = Config {
        // Keep retrying while Redis is away, rather than failing commands at once.
        fail_fast: false,
        ..Config::from_url(url)?
    };
    let max_delay = u32::try_from(settings.reconnect_max_delay.as_millis())
        .unwrap_or(u32::MAX)
        .max(100);
    let timeout = settings.command_timeout;
    let capacity = settings.broadcast_capacity;
    let mut b = Builder::from_config(config);
    b.set_policy(ReconnectPolicy::new_exponential(0, 100, max_delay, 2))
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            // A command in flight when the connection drops fails instead of running twice.
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
            if let Some(capacity) = capacity {
                p.broadcast_channel_capacity = capacity;
            }
        });
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            reconnect_max_delay: Duration::from_secs(5),
            command_timeout: Duration::from_millis(750),
            broadcast_capacity: Some(64),
        }
    }

    #[test]
    fn the_builder_carries_the_settings() {
        let b = builder("redis://127.0.0.1:6390/2", &settings()).expect("builder");
        let conn = b.get_connection_config();
        assert_eq!(conn.connection_timeout, Duration::from_millis(750));
        assert_eq!(conn.internal_command_timeout, Duration::from_millis(750));
        assert_eq!(conn.max_command_attempts, 1);
        let perf = b.get_performance_config();
        assert_eq!(perf.default_command_timeout, Duration::from_millis(750));
        assert_eq!(perf.broadcast_channel_capacity, 64);
        let config = b.get_config().expect("config");
        assert!(!config.fail_fast);
    }

    #[test]
    fn a_url_that_does_not_parse_is_an_error() {
        // The scheme is checked before, with the config (`RedisConfig::check_url`).
        assert!(builder("not a url", &settings()).is_err());
        assert!(builder("redis://", &settings()).is_err());
    }
}
