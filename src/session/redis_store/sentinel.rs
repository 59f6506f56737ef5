//! Redis Sentinel: which node is the master now. The sentinels are asked through the redis
//! crate's own client, which also checks with `ROLE` that the node they name is a master.

use std::time::Duration;

use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{Client, RedisConnectionInfo};

use super::RedisOptions;
use crate::session::error::StoreError;
use crate::session::store_url::redact;

/// A master that sentinels monitor (`redis+sentinel://`).
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// Sentinel URLs (`redis://host:port`), with the credentials only when the sentinels
    /// require them too.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the master under.
    pub master_name: String,
    pub db: u32,
    /// Credentials of the master and its replicas.
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Without the passwords, so a logged target shows none.
impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sentinels: Vec<String> = self.sentinels.iter().map(|s| redact(s)).collect();
        f.debug_struct("SentinelTarget")
            .field("sentinels", &sentinels)
            .field("master_name", &self.master_name)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Finds the current master and remembers the last one found.
pub(crate) struct SentinelMaster {
    sentinel: tokio::sync::Mutex<Sentinel>,
    name: String,
    node_info: SentinelNodeConnectionInfo,
    /// Bounds one round of asking (a hung sentinel or master must not hold a call up).
    ask_timeout: Duration,
    /// The master last found.
    current: std::sync::Mutex<Option<Client>>,
    /// Held by the store while it asks, so calls failing together ask once.
    pub(super) asking: tokio::sync::Mutex<()>,
}

impl SentinelMaster {
    pub(super) fn new(target: &SentinelTarget, options: &RedisOptions) -> Result<Self, StoreError> {
        let sentinel =
            Sentinel::build(target.sentinels.clone()).map_err(|e| StoreError::InvalidUrl {
                url: redact(&target.sentinels.join(",")),
                reason: e.to_string(),
            })?;
        let mut node = RedisConnectionInfo::default().set_db(i64::from(target.db));
        if let Some(username) = &target.username {
            node = node.set_username(username);
        }
        if let Some(password) = &target.password {
            node = node.set_password(password);
        }
        Ok(SentinelMaster {
            sentinel: tokio::sync::Mutex::new(sentinel),
            name: target.master_name.clone(),
            node_info: SentinelNodeConnectionInfo::default().set_redis_connection_info(node),
            ask_timeout: options.op_timeout,
            current: std::sync::Mutex::new(None),
            asking: tokio::sync::Mutex::new(()),
        })
    }

    /// Asks the sentinels for the master.
    pub(super) async fn locate(&self) -> Result<Client, StoreError> {
        let found = {
            let mut sentinel = self.sentinel.lock().await;
            tokio::time::timeout(
                self.ask_timeout,
                sentinel.async_master_for(&self.name, Some(&self.node_info)),
            )
            .await
        };
        let client = match found {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                return Err(StoreError::Unavailable(format!(
                    "no master {:?} found through the sentinels: {error}",
                    self.name
                )))
            }
            Err(_) => return Err(StoreError::Timeout(self.ask_timeout)),
        };
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
        Ok(client)
    }

    /// The master last found, or the one the sentinels name now.
    pub(super) async fn master(&self) -> Result<Client, StoreError> {
        let known = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match known {
            Some(client) => Ok(client),
            None => self.locate().await,
        }
    }
}
