//! A node's and a connection's life: start and stop, authenticate, connect and disconnect,
//! and announcing what the presence store finds by itself.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Gateway, Inner};
use crate::auth::{AuthError, Handshake, Identity};
use crate::broker::Inbox;
use crate::limits::TokenBucket;
use crate::presence::PresenceChange;
use crate::session::Session;
use crate::transport::{Connection, TransportId};

/// How long an announcement of a change the presence store found waits for the broker.
const STORE_CHANGE_BROKER_WAIT: Duration = Duration::from_secs(10);

impl Gateway {
    /// Starts background work: hooks, the broker (delivering to this node's rooms), the
    /// presence store, and announcing the changes presence finds by itself. Backend failures
    /// are logged; the node serves anyway. [`Node::serve`](crate::Node::serve) calls it;
    /// code that uses a gateway without serving it calls it first. A second call does
    /// nothing.
    pub async fn start(&self) {
        if self
            .0
            .started
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        for h in &self.0.hooks {
            h.start();
        }
        let rooms = Arc::downgrade(&self.0.rooms);
        let me = Arc::downgrade(&self.0);
        let control: crate::broker::ControlHandler = Arc::new(move |request| {
            let me = me.clone();
            Box::pin(async move {
                match me.upgrade() {
                    Some(inner) => inner.control_local(request).await,
                    None => serde_json::Value::Null,
                }
            })
        });
        let inbox = Inbox::from_fn(move |d| {
            if let Some(rooms) = rooms.upgrade() {
                rooms.deliver(d);
            }
        })
        .with_control(control);
        if let Err(e) = self.0.broker.start(inbox).await {
            tracing::warn!(error = %e, "room broker did not start; it keeps retrying");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(announce_store_changes(Arc::downgrade(&self.0), rx));
        if let Err(e) = self.0.presence.start(tx).await {
            tracing::warn!(error = %e, "presence store did not start; it keeps retrying");
        }
        self.start_recovery();
    }

    /// Waits until the broker is ready, for at most `limit`; whether it is.
    async fn wait_for_broker(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.0.broker.ready().await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether every backend answers.
    pub async fn ready(&self) -> bool {
        self.0.broker.ready().await && self.0.presence.ready().await
    }

    /// Closes every transport's sockets cleanly.
    pub async fn close_transports(&self) {
        for t in self.0.rooms.transports() {
            t.shutdown().await;
        }
    }

    /// Stops the plugins' background work (after transports closed their sockets).
    pub async fn shutdown(&self) {
        // What another node needs to place this node's sessions, before the broker goes.
        self.checkpoint(true).await;
        self.0.broker.shutdown().await;
        self.0.presence.shutdown().await;
    }

    /// Authenticates a handshake, counting failures.
    ///
    /// A verified identity may still be refused by `limits.max_connections` or
    /// `limits.max_connections_per_user` ([`AuthError::Refused`]).
    pub async fn authenticate(&self, handshake: &Handshake<'_>) -> Result<Identity, AuthError> {
        let result = self.0.auth.authenticate(handshake).await.and_then(|id| {
            self.admit(&id.user_id)?;
            Ok(id)
        });
        if let Err(e) = &result {
            self.0.metrics.error(match e {
                AuthError::NoToken => "auth_no_token",
                AuthError::InvalidToken => "auth_invalid_token",
                AuthError::Refused(_) => "connection_limit",
            });
        }
        result
    }

    fn admit(&self, user: &str) -> Result<(), AuthError> {
        let limits = &self.0.config.limits;
        let open = usize::try_from(self.0.metrics.connections.get()).unwrap_or(0);
        if limits.max_connections > 0 && open >= limits.max_connections {
            return Err(AuthError::Refused(
                "Connection refused: this node is at its connection limit".to_owned(),
            ));
        }
        let mine = self.0.per_user.lock().get(user).map_or(0, Vec::len);
        if limits.max_connections_per_user > 0 && mine >= limits.max_connections_per_user {
            return Err(AuthError::Refused(format!(
                "Connection refused: at most {} connections per user",
                limits.max_connections_per_user
            )));
        }
        Ok(())
    }

    /// Registers a connection that Rust code made (no transport): it gets every event
    /// through [`Connection::send`].
    pub async fn connect(&self, conn: Arc<dyn Connection>, identity: Identity) -> Arc<Session> {
        self.connect_via(TransportId::DIRECT, conn, identity).await
    }

    /// Registers an authenticated connection of `transport`: presence, `user:online`, the
    /// token's expiry timer.
    pub async fn connect_via(
        &self,
        transport: TransportId,
        conn: Arc<dyn Connection>,
        identity: Identity,
    ) -> Arc<Session> {
        let limits = &self.0.config.limits;
        let session = Arc::new(Session::new(
            conn,
            transport,
            identity,
            TokenBucket::new(limits.events_per_second, limits.burst),
            None,
        ));
        self.register_session(&session).await;
        session
    }

    /// Unregisters a closed connection: its rooms (after its pending joins and leaves),
    /// presence, `user:offline`.
    pub async fn disconnect(&self, session: &Arc<Session>) {
        self.0.expiry.cancel(session);
        let last = session.ticket();
        last.turn().await;
        self.0.rooms.leave_all(session).await;
        self.0.rooms.unregister(session);
        drop(last);
        self.0.metrics.connections.dec();
        self.0
            .metrics
            .transport_connections
            .get_or_create(&crate::metrics::TransportLabels {
                transport: self.transport_name(session.transport()).to_owned(),
            })
            .dec();
        let user = session.user_id();
        {
            let mut per_user = self.0.per_user.lock();
            if let Some(mine) = per_user.get_mut(&user) {
                mine.retain(|s| !Arc::ptr_eq(s, session));
                if mine.is_empty() {
                    per_user.remove(&user);
                }
            }
        }
        match self.0.presence.disconnect(&user, session.id()).await {
            Ok(true) => self.announce("user:offline", &user, None).await,
            Ok(false) => {}
            Err(e) => self.backend_error("presence", &e.to_string()),
        }
        session.ended.send_replace(true);
        tracing::debug!(socket = %session.id(), user = %user, "disconnected");
    }
}

/// Announces the changes the presence store found by itself (a dead node swept, a
/// connection registered late), until the gateway is gone.
async fn announce_store_changes(
    weak: Weak<Inner>,
    mut rx: mpsc::UnboundedReceiver<PresenceChange>,
) {
    // Whether to wait for the broker: not again after a wait that ran out, until the broker
    // is seen ready (a backlog must not wait once per change).
    let mut patient = true;
    while let Some(change) = rx.recv().await {
        let Some(inner) = weak.upgrade() else { break };
        let gw = Gateway(inner);
        // Changes found after an outage come as the backends return: give the broker a
        // moment to be back too, so the announcement reaches other nodes.
        let limit = if patient {
            STORE_CHANGE_BROKER_WAIT
        } else {
            Duration::ZERO
        };
        patient = gw.wait_for_broker(limit).await;
        match change {
            PresenceChange::Offline(user) => {
                gw.announce("user:offline", &user, None).await;
            }
            PresenceChange::Online { user, conn } => {
                // Not when every connection of the user closed meanwhile.
                let live =
                    gw.0.per_user
                        .lock()
                        .get(&user)
                        .is_some_and(|v| !v.is_empty());
                if live {
                    gw.announce("user:online", &user, Some(conn)).await;
                }
            }
        }
    }
}
