//! How the rest of the process tells the dispatcher "instance X may have
//! work": accepts, settles and instance changes mark the instance and wake
//! the dispatcher, which otherwise sleeps (no polling while idle).

use std::collections::HashSet;
use std::sync::Mutex;
use tokio::sync::Notify;
use zapgate_domain::InstanceId;

#[derive(Default)]
pub struct WorkSignal {
    marked: Mutex<HashSet<InstanceId>>,
    changed: Mutex<HashSet<InstanceId>>,
    notify: Notify,
}

impl WorkSignal {
    /// The instance's settings changed or it was deleted: rebuild its lane.
    pub fn changed(&self, instance: InstanceId) {
        self.changed.lock().unwrap_or_else(|p| p.into_inner()).insert(instance.clone());
        self.mark(instance);
    }

    pub fn take_changed(&self) -> HashSet<InstanceId> {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn mark(&self, instance: InstanceId) {
        self.marked.lock().unwrap_or_else(|p| p.into_inner()).insert(instance);
        self.notify.notify_one();
    }

    pub fn take(&self) -> HashSet<InstanceId> {
        std::mem::take(&mut *self.marked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub async fn notified(&self) {
        self.notify.notified().await
    }
}
