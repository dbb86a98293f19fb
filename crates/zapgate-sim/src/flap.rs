//! "Flapping health": an instance that connects and disconnects every
//! period, as a phone with a bad network makes it.
//!
//! [`Sim::flap`] (`POST /_sim/flap {"instance","period_ms"}`) makes the
//! instance connected now and then flips it every `period_ms`: a WAHA
//! session between `WORKING` and `STOPPED`, an Evolution instance between
//! `open` and `close` (statusReason 428, connection lost), a UAZAPI
//! instance (named by name or token) between `connected` and
//! `disconnected`. The state itself changes, so the status and health
//! routes answer it and sends fail while disconnected; each change is
//! posted to the instance's webhook where it has one taking it (WAHA
//! `session.status`, Evolution `connection.update`, UAZAPI `connection`).
//! [`Sim::stop_flap`] (`DELETE /_sim/flap/{instance}`, or `DELETE
//! /_sim/flap` for all) stops it and leaves the instance connected. A name
//! several providers have flaps on each of them.

use crate::Sim;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::AbortHandle;

impl Sim {
    fn flaps(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, AbortHandle>> {
        self.flaps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets `instance` (of any provider) connected or not; false if no
    /// provider has it.
    pub fn set_connected(&self, instance: &str, connected: bool) -> bool {
        self.set_connected_as(instance, connected, true)
    }

    /// Like [`Sim::set_connected`], posting the connection webhooks only if `notify`.
    fn set_connected_as(&self, instance: &str, connected: bool, notify: bool) -> bool {
        let waha = self.waha_set_connected(instance, connected, notify);
        let evolution = self.evolution_set_connected(instance, connected, notify);
        let uazapi = self.uazapi_set_connected(instance, connected, notify);
        waha || evolution || uazapi
    }

    fn dropped(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.dropped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `instance`'s connection drops while the number stays linked, as a
    /// phone losing its network does: its status routes answer it
    /// disconnected and sends fail. With `notify` false no webhook says so
    /// (the provider missed it, or its webhook was lost): only a status poll
    /// finds out. A reconnect request (WAHA `restart`, Evolution and UAZAPI
    /// `connect`) brings it back connected without a scan. False if no
    /// provider has it.
    pub fn drop_connection(&self, instance: &str, notify: bool) -> bool {
        let found = self.set_connected_as(instance, false, notify);
        if found {
            self.dropped().insert(instance.to_owned());
        }
        found
    }

    /// Whether `instance` had dropped (and now no longer counts as dropped).
    pub(crate) fn take_dropped(&self, instance: &str) -> bool {
        self.dropped().remove(instance)
    }

    /// Makes `instance` connected now and flips it every `period` until
    /// [`Sim::stop_flap`]; false (and nothing done) if no provider has it or
    /// `period` is zero. Needs a Tokio runtime.
    pub fn flap(self: &Arc<Self>, instance: &str, period: Duration) -> bool {
        if period.is_zero() || !self.set_connected(instance, true) {
            return false;
        }
        let sim = Arc::downgrade(self);
        let name = instance.to_owned();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut connected = true;
            loop {
                tick.tick().await;
                connected = !connected;
                let Some(sim) = sim.upgrade() else { return };
                if !sim.set_connected(&name, connected) {
                    return;
                }
            }
        });
        if let Some(old) = self.flaps().insert(instance.to_owned(), task.abort_handle()) {
            old.abort();
        }
        true
    }

    /// Stops `instance` flapping and leaves it connected; false if it was not flapping.
    pub fn stop_flap(&self, instance: &str) -> bool {
        let Some(task) = self.flaps().remove(instance) else { return false };
        task.abort();
        self.set_connected(instance, true);
        true
    }

    /// Stops every flapping instance (each left connected).
    pub fn stop_flaps(&self) {
        for name in self.flapping() {
            self.stop_flap(&name);
        }
    }

    /// The instances flapping now.
    pub fn flapping(&self) -> Vec<String> {
        let mut names: Vec<String> = self.flaps().keys().cloned().collect();
        names.sort();
        names
    }
}
