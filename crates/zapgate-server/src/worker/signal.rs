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
    notify: Notify,
}

impl WorkSignal {
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
